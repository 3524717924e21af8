"""Multiscale Vision Transformers: MViT (Fan et al., 2021) and MViTv2 (Li et al., 2022).

A hierarchy of channel/resolution stages built from pooling attention, after torchvision's
`mvit_v1_b` / `mvit_v2_s` and PySlowFast's `MViT` (`../shared/systems/conv_and_mvit.md`):
- Patch convolution: a Conv3d of kernel `mvit.patch_kernel` (3x7x7), stride model.patch_size
  (2x4x4) and padding `mvit.patch_padding` (1x3x3): 16x224^2 -> 8x56x56 tokens of `width` (96)
  channels, flattened in (t, h, w) order behind a CLS token.
- v1: learned position embeddings added to the tokens, separable (a table over the H'W'
  positions of a frame, `pos_embed`, plus one over the T' frames, `time_embed`, plus the CLS
  token's own, `cls_pos`; PySlowFast's SEP_POS_EMBED) or joint (one row per token, CLS first).
  v2: none; decomposed relative positions instead (below).
- `depth` multiscale blocks. A block at a stage start (`mvit.stages`) pools its queries by
  `mvit.q_stride` (1x2x2), halving the resolution, and doubles the heads; the channels double
  there too (v2, inside the attention: qkv maps C -> 2C) or in the block before it (v1: its
  MLP ends in 2C). Keys and values are pooled by a stride that starts at `mvit.kv_stride`
  (1x8x8) and is divided by each q stride, so they stay on one coarse grid.
- Pooling attention: q, k, v per head, each pooled over its (t, h, w) grid (the CLS token left
  out) by a depthwise Conv3d (`mvit.pool`="conv", kernel `mvit.pool_kernel`, padding
  kernel // 2) followed by a LayerNorm over the head's channels (CLS included), or by max/avg
  pooling; softmax(q k^T / sqrt(d) [+ relative positions]) v; v2 adds the pooled query back
  (residual pooling, CLS excluded); then the output projection. v1 pools queries only at
  stage starts; v2 at every block (stride 1 elsewhere).
- MViTv2's decomposed relative positions: tables of a row per offset along t, h and w
  (rel_pos_t [2T-1, d], rel_pos_h / rel_pos_w [2S-1, d]), each indexed by the query-key
  offset (scaled where q and k grids differ), multiplied into the pooled query and summed into
  the logits of the non-CLS tokens. A table whose size differs from the offsets' is resized
  linearly, as the references do.
- Block: x_n = LN1(x); x = pool_skip(x or proj(x_n)) + DropPath(attn(x_n)); x_n = LN2(x);
  x = (x or proj(x_n)) + DropPath(MLP(x_n)). pool_skip max-pools the residual like the
  queries (kernel stride + 1); proj (a Linear C -> 2C) moves the residual to the new width,
  before the attention in v2, before the MLP in v1.
- Head: final LayerNorm, the CLS token, dropout (model.head_dropout), Linear.

LayerNorm eps 1e-6, exact GELU, as both references. Parameters follow torchvision's structure
under our layers' names (qkv [C_in, 3, heads, head_dim] and proj [heads, head_dim, C_out] as
`layers.Attention`), so `vidtx.weights.mvit` converts torchvision and PySlowFast checkpoints
by table. Every block's token grid is fixed by the clip size at build time.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family
from vidtx.weights import inflate, mvit as mvit_weights

# config.model.size -> (version, width, depth, heads, stage starts). MViT-B 16x4 / 32x3 (v1)
# and MViTv2-S share the 16-block layout (stages of 1, 2, 11 and 2 blocks); MViTv2-B has 24
# (2, 3, 16, 3).
SIZES = {
    "v1_b": (1, 96, 16, 1, (1, 3, 14)),
    "v2_s": (2, 96, 16, 1, (1, 3, 14)),
    "v2_b": (2, 96, 24, 1, (2, 5, 21)),
}
POOLS = ("conv", "max", "avg")
POS_EMBEDS = ("separable", "joint", "none")
LN_EPS = 1e-6
# PyTorch's default init of convolutions (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan in)).
torch_conv_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


@functools.cache
def relative_index(q: int, k: int) -> np.ndarray:
  """[q, k] ints: the row of the relative table (2 max(q, k) - 1 rows) for each query-key pair
  along one axis; the coarser grid's offsets are scaled to the finer one's."""
  q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
  offset = np.arange(q)[:, None] * q_ratio - (np.arange(k)[None, :] - (k - 1)) * k_ratio
  return offset.astype(np.int64)


def pooled_size(grid, kernel, stride, padding=None):
  """(T', H', W') of a grid convolved or pooled as PyTorch does, with `padding` (None: kernel
  // 2) on both sides."""
  padding = tuple(k // 2 for k in kernel) if padding is None else padding
  return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(grid, kernel, stride, padding))


def pool_window(x, kernel, stride, mode: str):
  """Max or average pooling of x [B, T, H, W, C] with padding kernel // 2 (averages count the
  zero padding, as PyTorch's AvgPool3d does by default)."""
  window, strides = (1, *kernel, 1), (1, *stride, 1)
  padding = ((0, 0), *((k // 2, k // 2) for k in kernel), (0, 0))
  if mode == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  return (total / math.prod(kernel)).astype(x.dtype)


class Pool(nnx.Module):
  """Pools tokens [B, 1 + T H W, heads, d] over their (t, h, w) grid, the CLS token (first)
  passed by: a depthwise Conv3d over each head's d channels (shared by the heads;
  `layers.depthwise_conv3d`) and a LayerNorm over d (CLS included) for "conv"; max or average
  pooling otherwise."""

  def __init__(self, mode: str, dim: int, kernel, stride, *, dtype, rngs: nnx.Rngs):
    self.mode, self.kernel, self.stride = mode, tuple(kernel), tuple(stride)
    if mode == "conv":
      self.conv = layers.Conv3d(dim, dim, kernel, stride=stride,
                                padding=tuple(k // 2 for k in kernel), groups=dim,
                                axes=(None, "head_dim"), kernel_init=torch_conv_init,
                                dtype=dtype, rngs=rngs)
      self.norm = layers.LayerNorm(dim, eps=LN_EPS, rngs=rngs)
    else:
      self.conv = self.norm = None

  def __call__(self, x, grid):
    b, _, heads, d = x.shape
    cls, x = x[:, :1], x[:, 1:]
    x = jnp.moveaxis(x.reshape(b, *grid, heads, d), 4, 1).reshape(b * heads, *grid, d)
    if self.conv is None:
      x = pool_window(x, self.kernel, self.stride, self.mode)
    else:
      x = layers.depthwise_conv3d(x.astype(self.conv.dtype),
                                  self.conv.kernel[...].astype(self.conv.dtype), self.stride,
                                  tuple(k // 2 for k in self.kernel))
    x = jnp.moveaxis(x.reshape(b, heads, -1, d), 1, 2)
    x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    return x if self.norm is None else self.norm(x)


class PoolingAttention(nnx.Module):
  """Multi-head pooling attention over tokens [B, 1 + T H W, C_in] on `grid` (T, H, W) ->
  [B, 1 + T' H' W', C_out] on the query's pooled grid (`out_grid`). q, k and v are pooled by
  their kernel and stride where either is more than 1 (see `Pool`); `rel_pos`: MViTv2's
  decomposed relative positions, sized as the references size them (`table_grid`: the grid
  the references assume, sizes divided by the strides); `residual_pool`: the pooled query is
  added to the output (CLS excluded). The attention itself is `layers.dot_product_attention`
  (cuDNN's kernel where it runs, the relative positions as its bias)."""

  def __init__(self, dim_in: int, dim_out: int, num_heads: int, *, grid, table_grid, q_kernel,
               q_stride, kv_kernel, kv_stride, pool: str = "conv", rel_pos: bool = False,
               residual_pool: bool = False, qkv_bias: bool = True, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if dim_out % num_heads:
      raise ValueError(f"width {dim_out} is not divisible by num_heads {num_heads}")
    self.num_heads, self.head_dim, self.dtype = num_heads, dim_out // num_heads, dtype
    self.grid, self.residual_pool = tuple(grid), residual_pool
    d = self.head_dim
    self.qkv = layers.param(rngs, layers.trunc_normal, (dim_in, 3, num_heads, d),
                            ("embed", None, "heads", "head_dim"))
    bias = lambda: layers.param(rngs, layers.zeros, (dim_out,), ("heads",))
    self.q_bias, self.k_bias, self.v_bias = ((bias(), bias(), bias()) if qkv_bias
                                             else (None, None, None))
    self.proj = layers.param(rngs, layers.trunc_normal, (num_heads, d, dim_out),
                             ("heads", "head_dim", "embed"))
    self.proj_bias = layers.param(rngs, layers.zeros, (dim_out,), ("embed",))
    pooled = lambda kernel, stride: math.prod(kernel) > 1 or math.prod(stride) > 1
    make = lambda kernel, stride: (Pool(pool, d, kernel, stride, dtype=dtype, rngs=rngs)
                                   if pooled(kernel, stride) else None)
    self.pool_q, self.pool_k, self.pool_v = (make(q_kernel, q_stride), make(kv_kernel, kv_stride),
                                             make(kv_kernel, kv_stride))
    self.q_grid = pooled_size(grid, q_kernel, q_stride) if self.pool_q else self.grid
    self.k_grid = pooled_size(grid, kv_kernel, kv_stride) if self.pool_k else self.grid
    if rel_pos:
      side = max(table_grid[1:])
      spatial = 2 * max(side // q_stride[1], side // kv_stride[1]) - 1
      table = lambda rows: layers.param(rngs, layers.trunc_normal, (rows, d), (None, "head_dim"))
      self.rel_pos_h, self.rel_pos_w = table(spatial), table(spatial)
      self.rel_pos_t = table(2 * table_grid[0] - 1)
    else:
      self.rel_pos_h = self.rel_pos_w = self.rel_pos_t = None

  @property
  def out_grid(self):
    return self.q_grid

  def _pool(self, pool, x):
    return x if pool is None else pool(x, self.grid)

  def relative_positions(self, q):
    """[B, heads, N_q, N_k] float32: the decomposed relative positions of the pooled queries
    q [B, N_q, heads, d] against the pooled keys' grid; zero in the CLS row and column."""
    b, n, heads, d = q.shape
    r_q = q[:, 1:].reshape(b, *self.q_grid, heads, d)
    rel = []
    for axis, table in enumerate((self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)):
      qn, kn = self.q_grid[axis], self.k_grid[axis]
      table = table[...]
      rows = 2 * max(qn, kn) - 1
      if table.shape[0] != rows:
        table = jnp.asarray(inflate.linear_resize_matrix(table.shape[0], rows),
                            jnp.float32) @ table
      r = table[relative_index(qn, kn)].astype(q.dtype)  # [q, k, d] along this axis
      subscripts = ("bthwnd,tkd->bnthwk", "bthwnd,hkd->bnthwk", "bthwnd,wkd->bnthwk")[axis]
      rel.append(jnp.einsum(subscripts, r_q, r, preferred_element_type=jnp.float32))
    rel_t, rel_h, rel_w = rel
    bias = (rel_t[..., :, None, None] + rel_h[..., None, :, None]
            + rel_w[..., None, None, :])  # [B, heads, qt, qh, qw, kt, kh, kw]
    bias = bias.reshape(b, heads, n - 1, -1)
    return jnp.pad(bias, ((0, 0), (0, 0), (1, 0), (1, 0)))

  def __call__(self, x):
    b, n, c = x.shape
    qkv = x.reshape(b * n, c).astype(self.dtype) @ self.qkv[...].astype(self.dtype).reshape(c, -1)
    qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = (qkv[:, :, i] if bias is None else
               qkv[:, :, i] + bias[...].astype(self.dtype).reshape(self.num_heads, -1)
               for i, bias in enumerate((self.q_bias, self.k_bias, self.v_bias)))
    q, k, v = self._pool(self.pool_q, q), self._pool(self.pool_k, k), self._pool(self.pool_v, v)
    bias = self.relative_positions(q) if self.rel_pos_t is not None else None
    out = layers.dot_product_attention(q, k, v, bias=bias)
    if self.residual_pool:
      out = jnp.concatenate([out[:, :1], out[:, 1:] + q[:, 1:]], axis=1)
    out = out.reshape(b * out.shape[1], -1) @ self.proj[...].astype(self.dtype).reshape(
        -1, self.proj.shape[-1])
    out = out + self.proj_bias[...].astype(self.dtype)
    return out.reshape(b, -1, out.shape[-1])


class Mlp(nnx.Module):
  """Linear -> GELU -> Linear, dim -> hidden -> dim_out (a stage's last v1 block widens)."""

  def __init__(self, dim: int, hidden: int, dim_out: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.Dense(dim, hidden, ("embed", "mlp"), kernel_init=layers.trunc_normal,
                            dtype=dtype, rngs=rngs)
    self.fc2 = layers.Dense(hidden, dim_out, ("mlp", "embed"), kernel_init=layers.trunc_normal,
                            dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class MultiscaleBlock(nnx.Module):
  """One MViT block (see the module docstring) on tokens [B, 1 + T H W, C_in] of `grid`;
  `proj_after_attn` (v2): the attention itself widens to C_out, else the MLP does (v1)."""

  def __init__(self, dim_in: int, dim_out: int, num_heads: int, *, grid, table_grid, q_kernel,
               q_stride, kv_kernel, kv_stride, pool: str, version: int, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, drop_path: float = 0.0, remat: str = "none",
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.drop_path, self.remat, self.grid = drop_path, remat, tuple(grid)
    self.proj_after_attn = version == 2
    attn_dim = dim_out if self.proj_after_attn else dim_in
    self.norm1 = layers.LayerNorm(dim_in, eps=LN_EPS, rngs=rngs)
    self.attn = PoolingAttention(dim_in, attn_dim, num_heads, grid=grid, table_grid=table_grid,
                                 q_kernel=q_kernel, q_stride=q_stride, kv_kernel=kv_kernel,
                                 kv_stride=kv_stride, pool=pool, rel_pos=version == 2,
                                 residual_pool=version == 2, qkv_bias=qkv_bias, dtype=dtype,
                                 rngs=rngs)
    self.norm2 = layers.LayerNorm(attn_dim, eps=LN_EPS, rngs=rngs)
    self.mlp = Mlp(attn_dim, int(attn_dim * mlp_ratio), dim_out, dtype=dtype, rngs=rngs)
    self.proj = (layers.Dense(dim_in, dim_out, ("embed", "mlp"), kernel_init=layers.trunc_normal,
                              dtype=dtype, rngs=rngs) if dim_in != dim_out else None)
    # The residual is max-pooled like the queries: kernel stride + 1 where it strides.
    self.skip_stride = tuple(q_stride) if math.prod(q_stride) > 1 else None
    self.skip_kernel = tuple(s + 1 if s > 1 else s for s in q_stride)

  @property
  def out_grid(self):
    return self.attn.out_grid

  def __call__(self, x, key=None):
    if self.remat == "none":
      return layers.gradient_buffer(self._forward(x, key))
    return layers.gradient_buffer(nnx.remat(
        MultiscaleBlock._forward, policy=layers.REMAT_POLICIES[self.remat])(self, x, key))

  def _skip(self, x):
    if self.skip_stride is None:
      return x
    b, _, c = x.shape
    pooled = pool_window(x[:, 1:].reshape(b, *self.grid, c), self.skip_kernel,
                         self.skip_stride, "max")
    return jnp.concatenate([x[:, :1], pooled.reshape(b, -1, c)], axis=1)

  def _forward(self, x, key):
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    x_norm = self.norm1(x)
    attn = self.attn(x_norm)
    if self.proj is not None and self.proj_after_attn:
      x = self.proj(x_norm)
    x = self._skip(x) + layers.drop_path(attn, self.drop_path, k1).astype(x.dtype)
    x_norm = self.norm2(x)
    mlp = self.mlp(x_norm)
    if self.proj is not None and not self.proj_after_attn:
      x = self.proj(x_norm)
    return x + layers.drop_path(mlp, self.drop_path, k2).astype(x.dtype)


def block_settings(version: int, width: int, depth: int, heads: int, stages, *, q_stride,
                   kv_stride, pool_kernel):
  """Per block: (C_in, C_out, heads, q kernel, q stride, kv kernel, kv stride).

  Heads double at each stage start; channels too, in that block's attention (v2) or in the MLP
  of the block before (v1). Queries are pooled at stage starts (v1 only there; v2 at every
  block, stride 1 elsewhere); keys and values at every block, their stride divided by each
  stage's q stride (PySlowFast's POOL_KV_STRIDE_ADAPTIVE)."""
  ones = (1, 1, 1)
  starts = lambda i: sum(s <= i for s in stages)
  settings, dim_in, kv = [], width, tuple(kv_stride)
  for i in range(depth):
    start = i in stages
    if start:
      kv = tuple(max(a // b, 1) for a, b in zip(kv, q_stride))
    dim_out = width * 2 ** starts(i if version == 2 else i + 1)
    stride_q = tuple(q_stride) if start else ones
    kernel_q = tuple(pool_kernel) if start or version == 2 else ones
    settings.append((dim_in, dim_out, heads * 2 ** starts(i), kernel_q, stride_q,
                     tuple(pool_kernel), kv))
    dim_in = dim_out
  return settings


class MViT(nnx.Module):
  """Patch convolution, CLS token and position embeddings, multiscale blocks, final
  LayerNorm and a Linear head on the CLS token (see the module docstring)."""

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int, version: int = 2,
               width: int = 96, depth: int = 16, num_heads: int = 1, stages=(1, 3, 14),
               patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
               q_stride=(1, 2, 2), kv_stride=(1, 8, 8), pool_kernel=(3, 3, 3), pool: str = "conv",
               pos_embed: str = "", mlp_ratio: float = 4.0, qkv_bias: bool = True,
               drop_path: float = 0.0, head_dropout: float = 0.0, head_init_scale: float = 1.0,
               remat: str = "none", dtype=jnp.float32, rngs: nnx.Rngs):
    pos_embed = pos_embed or ("separable" if version == 1 else "none")
    if pos_embed not in POS_EMBEDS:
      raise ValueError(f"pos_embed={pos_embed!r}: choose one of {POS_EMBEDS}")
    if pool not in POOLS:
      raise ValueError(f"pool={pool!r}: choose one of {POOLS}")
    self.head_dropout, self.dtype = head_dropout, dtype
    # The stem reads 3 RGB channels, which split over no mesh axis.
    self.patch_embed = layers.Conv3d(3, width, patch_kernel, stride=patch_stride,
                                     padding=patch_padding, use_bias=True, axes=(None, "embed"),
                                     kernel_init=torch_conv_init, dtype=dtype, rngs=rngs)
    self.grid = pooled_size((num_frames, image_size, image_size), patch_kernel, patch_stride,
                            patch_padding)
    # What the references size their tables by: the clip divided by the strides.
    table_grid = tuple(n // s for n, s in zip((num_frames, image_size, image_size), patch_stride))
    if table_grid != self.grid:
      raise ValueError(f"the patch convolution makes a {self.grid} grid of a "
                       f"{num_frames}x{image_size}^2 clip, not the {table_grid} of its "
                       "stride: set config.model.mvit.patch_padding to about (kernel - "
                       "stride) / 2, e.g. (1, 3, 3) for a 3x7x7 kernel of stride 2x4x4")
    t, h, w = self.grid
    self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    # Separable: a frame's positions, the frames, the CLS token's; joint: a row per token.
    separable = pos_embed == "separable"
    rows = {"separable": h * w, "joint": 1 + t * h * w}.get(pos_embed)
    self.pos_embed = layers.LearnedPosEmbed(rows, width, rngs=rngs) if rows else None
    self.time_embed = layers.LearnedPosEmbed(t, width, rngs=rngs) if separable else None
    self.cls_pos = (layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
                    if separable else None)
    blocks, grid = [], self.grid
    settings = block_settings(version, width, depth, num_heads, stages, q_stride=q_stride,
                              kv_stride=kv_stride, pool_kernel=pool_kernel)
    for (dim_in, dim_out, heads, kernel_q, stride_q, kernel_kv, stride_kv), rate in zip(
        settings, layers.drop_path_rates(drop_path, depth)):
      block = MultiscaleBlock(dim_in, dim_out, heads, grid=grid, table_grid=table_grid,
                              q_kernel=kernel_q, q_stride=stride_q, kv_kernel=kernel_kv,
                              kv_stride=stride_kv, pool=pool, version=version,
                              mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                              remat=remat, dtype=dtype, rngs=rngs)
      blocks.append(block)
      grid = block.out_grid
      table_grid = tuple(n // s for n, s in zip(table_grid, stride_q))
    self.blocks = nnx.List(blocks)
    dim = settings[-1][1]
    self.norm = layers.LayerNorm(dim, eps=LN_EPS, rngs=rngs)
    head_init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * head_init_scale
    self.head = layers.Dense(dim, num_classes, ("embed", "classes"), kernel_init=head_init,
                             rngs=rngs)

  def position_table(self):
    """[1 + T' H' W', D]: every token's position embedding, the CLS token's first; None
    without absolute positions (v2)."""
    if self.pos_embed is None:
      return None
    if self.time_embed is None:
      return self.pos_embed.table()
    t, s = self.time_embed.table(), self.pos_embed.table()
    grid = (t[:, None, :] + s[None, :, :]).reshape(-1, s.shape[-1])
    return jnp.concatenate([self.cls_pos[...][0], grid], axis=0)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `key` drives drop path and
    dropout and is only used when `train`."""
    if keep is not None:
      raise ValueError("mvit sees every token: set config.model.masking='none'")
    key = key if train else None
    x = self.patch_embed(video)
    if x.shape[1:4] != self.grid:
      raise ValueError(f"a clip of {video.shape[1:4]} gives a {x.shape[1:4]} token grid; this "
                       f"model was built for {self.grid} (data.num_frames, data.crop_size)")
    b, d = x.shape[0], x.shape[-1]
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x.reshape(b, -1, d)], axis=1)
    table = self.position_table()
    if table is not None:
      x = x + table.astype(x.dtype)[None]
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    x = self.norm(x)[:, 0]
    dropout_key = jax.random.fold_in(key, len(self.blocks)) if key is not None else None
    x = layers.dropout(x, self.head_dropout, dropout_key)
    return self.head(x).astype(jnp.float32), {}


def size(model_config: ml_collections.ConfigDict):
  """(version, width, depth, heads, stage starts) of the configured model: the size's, unless
  model.width, model.depth, model.num_heads or model.mvit.stages override them."""
  version, width, depth, heads, stages = SIZES[model_config.size]
  s = model_config.mvit
  return (version, model_config.width or width, model_config.depth or depth,
          model_config.num_heads or heads, tuple(s.stages) if s.stages else stages)


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> MViT:
  version, width, depth, heads, stages = size(model_config)
  s = model_config.mvit
  return MViT(num_classes=data_config.num_classes, num_frames=data_config.num_frames,
              image_size=data_config.crop_size, version=version, width=width, depth=depth,
              num_heads=heads, stages=stages, patch_kernel=tuple(s.patch_kernel),
              patch_stride=tuple(model_config.patch_size), patch_padding=tuple(s.patch_padding),
              q_stride=tuple(s.q_stride), kv_stride=tuple(s.kv_stride),
              pool_kernel=tuple(s.pool_kernel), pool=s.pool, pos_embed=s.pos_embed,
              mlp_ratio=model_config.mlp_ratio, qkv_bias=model_config.qkv_bias,
              drop_path=model_config.drop_path, head_dropout=model_config.head_dropout,
              head_init_scale=model_config.head_init_scale, remat=model_config.remat,
              dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # model.size picks the version and layout (SIZES); model.width / depth / num_heads and
  # these override it. model.patch_size is the patch convolution's stride.
  s = ml_collections.ConfigDict()
  s.stages = ()  # blocks where a stage starts (heads and channels double); (): the size's
  s.patch_kernel = (3, 7, 7)  # the patch convolution's (t, h, w) kernel
  s.patch_padding = (1, 3, 3)
  s.q_stride = (1, 2, 2)  # query pooling stride at each stage start
  s.kv_stride = (1, 8, 8)  # key/value pooling stride of the first stage, / each q stride
  s.pool_kernel = (3, 3, 3)  # kernel of the q, k and v pooling
  s.pool = "conv"  # "conv" (depthwise Conv3d + LayerNorm), "max" or "avg"
  # "separable" (v1's default), "joint" or "none" (v2's default); "": the version's.
  s.pos_embed = ""
  return s


def _triple(value) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) == 3
          and all(isinstance(v, int) and v >= 1 for v in value))


def _check(config: ml_collections.ConfigDict) -> None:
  m, s = config.model, config.model.mvit
  for field in ("patch_kernel", "q_stride", "kv_stride", "pool_kernel"):
    if not _triple(s[field]):
      errors.fail(f"model.mvit.{field}", s[field], "give (t, h, w) positive ints, e.g. (3, 3, 3)")
  if (not isinstance(s.patch_padding, (tuple, list)) or len(s.patch_padding) != 3
      or any(not isinstance(p, int) or p < 0 for p in s.patch_padding)):
    errors.fail("model.mvit.patch_padding", s.patch_padding, "give (t, h, w) ints >= 0")
  if not _triple(m.patch_size):
    errors.fail("model.patch_size", m.patch_size, "give the patch convolution's (t, h, w) "
                "stride, e.g. (2, 4, 4)")
  if s.pool not in POOLS:
    errors.fail("model.mvit.pool", s.pool, f"choose one of {POOLS}")
  if s.pos_embed not in ("", *POS_EMBEDS):
    errors.fail("model.mvit.pos_embed", s.pos_embed, f"choose one of {POS_EMBEDS} or '' (the "
                "version's)")
  _, width, depth, heads, stages = size(m)
  if s.stages and (any(not isinstance(i, int) for i in s.stages)
                   or list(s.stages) != sorted(set(s.stages))
                   or not 0 < s.stages[0] <= s.stages[-1] < depth):
    errors.fail("model.mvit.stages", s.stages, f"give increasing block indices in [1, {depth}) "
                "where stages start, e.g. (1, 3, 14), or () for the size's")
  if any(i >= depth for i in stages):
    errors.fail("model.depth", depth, f"the stages start at blocks {stages}: give more blocks "
                "or set model.mvit.stages")
  if width % heads:
    errors.fail("model.width", width, f"must be divisible by model.num_heads={heads}")
  d = config.data
  clip = (d.num_frames, d.crop_size, d.crop_size)
  grid = pooled_size(clip, s.patch_kernel, m.patch_size, s.patch_padding)
  if grid != tuple(n // p for n, p in zip(clip, m.patch_size)):
    errors.fail("model.mvit.patch_padding", s.patch_padding, f"the patch convolution makes a "
                f"{grid} token grid of a {clip} clip, not clip / model.patch_size: give about "
                "(kernel - stride) / 2, e.g. (1, 3, 3) for a 3x7x7 kernel of stride 2x4x4")
  if all(_triple(v) for v in (s.q_stride, s.pool_kernel)):
    for _ in stages:
      grid = pooled_size(grid, s.pool_kernel, s.q_stride)
    if min(grid) < 1:
      errors.fail("data.crop_size", d.crop_size, f"is too small for {len(stages)} stages of "
                  f"query stride {tuple(s.q_stride)}")


def layer_of(names: tuple[str, ...], depth: int) -> int:
  """Layer-wise lr decay: 0 for the patch embedding, CLS token and positions, i + 1 for block
  i, depth + 1 for the final norm and head."""
  if names and names[0] == "blocks":
    return int(names[1]) + 1
  if names and names[0] in ("patch_embed", "cls_token", "pos_embed", "time_embed", "cls_pos"):
    return 0
  return depth + 1


FAMILY = Family(
    name="mvit",
    build=build,
    sizes=SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
           "remat", "drop_path", "head_dropout", "head_init_scale", "dtype"),
    section=section,
    check=_check,
    tubelets=True,  # model.patch_size strides the patch convolution, so it must tile the clip
    layer_decay_depth=lambda model_config: size(model_config)[2],
    layer_of=layer_of,
    converters=mvit_weights.SOURCES,
    # No rollout: pooled keys make each attention map N_q tokens onto fewer N_k, so there is
    # no token-to-token product over the blocks.
)
