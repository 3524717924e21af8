"""Shared transformer and convolution pieces; every video model composes these.

Conventions: video is [B, T, H, W, C]; tokens are [B, N, D] in (t, h, w) order unless a model
documents otherwise (`TokenLayout`). Every parameter carries logical axis names (see
`vidtx.sharding`) so that data, FSDP and tensor parallelism are a config change. Parameters are
float32; computation runs in `dtype`; normalization and softmax run in float32.

Convolutional networks keep the activations channels-last too: `Conv3d` kernels are
[kT, kH, kW, C_in, C_out], and `BatchNorm` keeps its running statistics as `nnx.BatchStat`
state, which the train step updates and checkpoints hold.

Space-time attention variants (`ATTENTIONS`) are one swappable piece of `Block`: which tokens
each query sees (an `attend` rule over q, k, v) and whether a separate temporal step runs
before or after the block's attention. A new factorisation is a new rule and one entry.
"""

import contextlib
import dataclasses
import functools
import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = jnp.dtype


def param(rngs, init, shape, axes):
  """A float32 parameter with logical axis names `axes` (one per dimension).

  The names are metadata only; `vidtx.sharding` turns them into shardings, so models can be
  built with or without a mesh.
  """
  assert len(axes) == len(shape), (shape, axes)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes,
                   eager_sharding=False)


xavier = nnx.initializers.xavier_uniform()
trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32, returned in the input dtype."""

  def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, ones, (dim,), ("norm",))
    self.bias = param(rngs, zeros, (dim,), ("norm",))

  def __call__(self, x):
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias with logical axes (in_axis, out_axis)."""

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, use_bias: bool = True,
               dtype: Dtype = jnp.float32, kernel_init=xavier, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init, (d_in, d_out), axes)
    self.bias = param(rngs, zeros, (d_out,), axes[1:]) if use_bias else None

  def __call__(self, x):
    # One 2-D matmul over all leading axes: XLA:CPU runs its gradients faster than a batched one.
    y = x.reshape(-1, x.shape[-1]).astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])


@jax.custom_vjp
def gradient_buffer(x):
  """The identity, with a gradient that XLA:CPU computes into one buffer.

  XLA:CPU fuses the residual stream's gradient into each of its consumers rather than compute it
  once, so every block's backward pass recomputes the element-wise gradients of all the blocks
  above it: quadratic in depth (a third of a 4-block ViT's step, more for deeper ones). A
  conditional is never fused into its consumers, so passing the gradient through one stops
  that. Other backends get the plain identity (a conditional would sync the host on GPU).
  """
  return x


def _gradient_buffer_bwd(_, g):
  if jax.default_backend() != "cpu":
    return (g,)
  first = g.ravel()[0]
  # The false branch only runs for a NaN gradient, which stays NaN; the branches must differ,
  # or XLA removes the conditional.
  return (jax.lax.cond(first == first, lambda g: g, lambda g: jnp.full_like(g, jnp.nan), g),)


gradient_buffer.defvjp(lambda x: (x, None), _gradient_buffer_bwd)


def dropout(x, rate: float, key):
  """Inverted dropout; identity without a key (evaluation)."""
  if key is None or rate == 0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def drop_path(x, rate: float, key):
  """Stochastic depth: zero a sample's residual branch with probability `rate`."""
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where a clip's tokens [B, N, ...] lie: an optional CLS token first, then a grid of
  `frames` time steps x S spatial positions, time-major (n = t S + s, vidtx's order) or
  space-major (n = s T + t, TimeSformer's). `width`: positions per row of a frame's grid
  (s = row * width + column), for rules that need 2-D positions (patch_shift); 0: not given."""
  frames: int
  cls_token: bool = False
  space_major: bool = False
  width: int = 0

  def split(self, x):
    """(CLS [B, 1, ...] or None, grid [B, T, S, ...]) of tokens [B, N, ...]."""
    cls, x = (x[:, :1], x[:, 1:]) if self.cls_token else (None, x)
    if self.space_major:
      return cls, jnp.swapaxes(x.reshape(x.shape[0], -1, self.frames, *x.shape[2:]), 1, 2)
    return cls, x.reshape(x.shape[0], self.frames, -1, *x.shape[2:])

  def join(self, cls, grid):
    """The inverse of `split`."""
    if self.space_major:
      grid = jnp.swapaxes(grid, 1, 2)
    x = grid.reshape(grid.shape[0], -1, *grid.shape[3:])
    return x if cls is None else jnp.concatenate([cls, x], axis=1)


def attention_kernel(dtype, head_dim: int, device) -> str:
  """"cudnn" where cuDNN's fused (flash) attention runs: an NVIDIA GPU of compute capability
  8.0 or newer, bfloat16 or float16 inputs, a head size that is a multiple of 8 up to 128. It
  never stores the N x N scores, which is most of attention's memory and time at video lengths.
  "xla" elsewhere: XLA's einsums and float32 softmax, the same on every backend."""
  if (device.platform == "gpu" and "cuda" in device.client.platform_version
      and float(getattr(device, "compute_capability", 0)) >= 8.0
      and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return "cudnn"
  return "xla"


_force_xla_attention = False  # set by xla_attention()


@contextlib.contextmanager
def xla_attention():
  """Models traced inside use XLA's attention on every machine. For FLOP counts: a fused
  kernel is one custom call whose FLOPs XLA's cost analysis leaves out."""
  global _force_xla_attention
  _force_xla_attention = True
  try:
    yield
  finally:
    _force_xla_attention = False


def dot_product_attention(q, k, v, bias=None):
  """Softmax attention over q, k, v [B, N, heads, head_dim], with the kernel
  `attention_kernel` picks for this machine. k and v may have fewer tokens than q (pooled
  keys); `bias` [B, heads, N_q, N_k] is added to the logits (relative positions)."""
  if not _force_xla_attention and attention_kernel(q.dtype, q.shape[-1],
                                                   jax.devices()[0]) == "cudnn":
    if bias is None:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype),
                                        implementation="cudnn")
  # Heads before tokens, so the batched dots have their batch axes leading: XLA:CPU runs
  # these and their gradients 1.3-1.7x faster than jax.nn.dot_product_attention's XLA path,
  # which keeps [B, N, heads, head_dim]. Logits and softmax in float32, as there. The softmax
  # is normalised after the second dot, on [N, head_dim] rather than [N, N] (as flash
  # attention does): one pass less over the N x N scores.
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * q.shape[-1] ** -0.5, k,
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return jnp.swapaxes(out / weights.sum(axis=-1, keepdims=True), 1, 2).astype(v.dtype)


# Attend rules: (q, k, v [B, N, heads, head_dim], layout) -> [B, N, heads, head_dim]. They
# decide which keys each query sees; the projections around them are the same for all.

def attend_all(q, k, v, layout):
  """Joint space-time attention: every token attends to every token."""
  del layout
  return dot_product_attention(q, k, v)


def attend_within_frames(q, k, v, layout):
  """Spatial attention: a token attends to the tokens of its own frame. A CLS token takes part
  in every frame's attention and its output is the mean over the frames (TimeSformer)."""
  (q_cls, q), (k_cls, k), (v_cls, v) = (layout.split(x) for x in (q, k, v))
  b, t, s, h, e = q.shape

  def per_frame(x, cls):  # [B * T, (1 +) S, heads, head_dim]
    if cls is not None:
      x = jnp.concatenate([jnp.broadcast_to(cls[:, None], (b, t, 1, h, e)), x], axis=2)
    return x.reshape(b * t, -1, h, e)

  out = dot_product_attention(per_frame(q, q_cls), per_frame(k, k_cls),
                              per_frame(v, v_cls)).reshape(b, t, -1, h, e)
  if q_cls is None:
    return layout.join(None, out)
  return layout.join(out[:, :, 0].mean(axis=1, keepdims=True), out[:, :, 1:])


def attend_within_positions(q, k, v, layout):
  """Temporal attention: a token attends to the tokens at its spatial position in every frame.
  The layout must have no CLS token (the temporal steps leave it out)."""
  (_, q), (_, k), (_, v) = (layout.split(x) for x in (q, k, v))
  b, t, s, h, e = q.shape
  per_position = lambda x: jnp.swapaxes(x, 1, 2).reshape(b * s, t, h, e)
  out = dot_product_attention(per_position(q), per_position(k), per_position(v))
  return layout.join(None, jnp.swapaxes(out.reshape(b, s, t, h, e), 1, 2))


def attend_split_heads(q, k, v, layout):
  """Factorised dot-product attention (ViViT model 4): the first half of the heads attend over
  time, the second half within frames; the output projection then mixes both."""
  half = q.shape[2] // 2
  time = attend_within_positions(q[:, :, :half], k[:, :, :half], v[:, :, :half], layout)
  space = attend_within_frames(q[:, :, half:], k[:, :, half:], v[:, :, half:], layout)
  return jnp.concatenate([time, space], axis=2)


# TPS (Xiang et al., 2022), pattern C: the token at row i, column j of a grid (a Swin window, a
# ViT frame) takes frame t - PATCH_SHIFT_PATTERN[i % 3, j % 3], cyclically, so each 3 x 3 tile
# of a frame holds frames t-4 .. t+4.
PATCH_SHIFT_PATTERN = np.array([[-4, 1, 2], [-1, 0, 3], [-2, -3, 4]])


def patch_shift_sources(frames: int, height: int, width: int, inverse: bool = False):
  """[T, height * width] ints: the frame each grid position takes at frame t, (t - s) mod T;
  `inverse`: (t + s) mod T, which undoes the shift."""
  i, j = np.divmod(np.arange(height * width), width)
  s = PATCH_SHIFT_PATTERN[i % 3, j % 3]
  t = np.arange(frames)[:, None]
  return (t + s if inverse else t - s) % frames


def patch_shift(x, height: int, width: int, inverse: bool = False):
  """TPS's temporal patch shift of x [B, T, height * width, ...] (pattern C, all channels)."""
  sources = patch_shift_sources(x.shape[1], height, width, inverse)
  return x[:, sources, np.arange(x.shape[2])]  # one gather: out[:, t, s] = x[:, src[t, s], s]


def channel_shift(x, num_heads: int):
  """TSM's shift of x [B, T, ..., heads * head_dim], per head: channels [0, d/8) take frame
  t-1, [d/8, d/4) frame t+1; the first (last) frame keeps its own where it has no neighbour."""
  x = x.reshape(*x.shape[:-1], num_heads, -1)
  fold = x.shape[-1] // 8
  previous = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
  following = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
  x = jnp.concatenate([previous[..., :fold], following[..., fold:2 * fold], x[..., 2 * fold:]],
                      axis=-1)
  return x.reshape(*x.shape[:-2], -1)


def attend_patch_shift(q, k, v, layout):
  """TPS on a ViT: q, k and v of each frame's grid are patch-shifted (pattern C over the
  frame's positions), attend within their frame (a CLS token in all frames, as
  attend_within_frames), and the output is shifted back: spatial attention that sees
  frames t-4 .. t+4 at the cost of 2-D attention. The layout must give the grid `width`."""
  if not layout.width:
    raise ValueError("attention 'patch_shift' needs the grid width in the token layout")

  def shift(x, inverse=False):
    cls, grid = layout.split(x)
    height = grid.shape[2] // layout.width
    return layout.join(cls, patch_shift(grid, height, layout.width, inverse))

  return shift(attend_within_frames(shift(q), shift(k), shift(v), layout), inverse=True)


class Attention(nnx.Module):
  """Multi-head self-attention; `attend` (with the token `layout`) picks which tokens each
  query sees, all tokens by default.

  The qkv kernel is [D, 3, heads, head_dim] so tensor parallelism splits whole heads. With
  `qkv_bias`, q and v get learned biases, and k one too only with `k_bias`: VideoMAE has none,
  ViT-style references (TimeSformer, ViViT) have one. A k bias adds the same q . b_k to all of
  a query's logits, which the softmax cancels; it is kept so those checkpoints load exactly.
  """

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, k_bias: bool = False,
               attend: Callable = attend_all, layout: TokenLayout | None = None,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
    self.num_heads, self.head_dim, self.dtype = num_heads, dim // num_heads, dtype
    self.attend, self.layout = attend, layout
    shape = (dim, 3, num_heads, self.head_dim)
    # Xavier over the fused [D, 3D] matrix, as the references initialise it.
    qkv_init = lambda key, shape, dtype: xavier(key, (dim, 3 * dim), dtype).reshape(shape)
    self.qkv = param(rngs, qkv_init, shape, ("embed", None, "heads", "head_dim"))
    # 1-D like every bias, so weight decay skips them by rank.
    bias = lambda: param(rngs, zeros, (dim,), ("heads",))
    self.q_bias = bias() if qkv_bias else None
    self.k_bias = bias() if qkv_bias and k_bias else None
    self.v_bias = bias() if qkv_bias else None
    proj_init = lambda key, shape, dtype: xavier(key, (dim, dim), dtype).reshape(shape)
    self.proj = param(rngs, proj_init, (num_heads, self.head_dim, dim),
                      ("heads", "head_dim", "embed"))
    self.proj_bias = param(rngs, zeros, (dim,), ("embed",))

  def __call__(self, x):
    # The projections are 2-D matmuls over all tokens (see Dense).
    b, n, d = x.shape
    qkv = x.reshape(b * n, d).astype(self.dtype) @ self.qkv[...].astype(self.dtype).reshape(d, -1)
    qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = (self._add_bias(qkv[:, :, i], bias)
               for i, bias in enumerate((self.q_bias, self.k_bias, self.v_bias)))
    out = self.attend(q, k, v, self.layout).reshape(b * n, -1)
    out = out @ self.proj[...].astype(self.dtype).reshape(-1, d)
    return (out + self.proj_bias[...].astype(self.dtype)).reshape(b, n, d)

  def _add_bias(self, y, bias):
    if bias is None:
      return y
    return y + bias[...].astype(self.dtype).reshape(self.num_heads, self.head_dim)


def quick_gelu(x):
  """CLIP's GELU approximation x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


class Mlp(nnx.Module):
  """Linear -> GELU -> Linear. `approximate_gelu`: the tanh approximation (Scenic's ViViT and
  HF's "gelu_fast") instead of the exact erf form; `quick_gelu`: CLIP's sigmoid form."""

  def __init__(self, dim: int, hidden: int, *, approximate_gelu: bool = False,
               quick_gelu: bool = False, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if approximate_gelu and quick_gelu:
      raise ValueError("choose one of approximate_gelu and quick_gelu")
    self.approximate_gelu, self.quick_gelu = approximate_gelu, quick_gelu
    self.fc1 = Dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = Dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.fc1(x)
    x = quick_gelu(x) if self.quick_gelu else jax.nn.gelu(x, approximate=self.approximate_gelu)
    return self.fc2(x)


class TemporalAttention(nnx.Module):
  """The time step of a factorised block: x + [fc](DropPath(Attn(LN x))), each token attending
  to its spatial position's tokens in every frame. A CLS token is left out and passes
  unchanged. TimeSformer adds `fc`, a Linear initialised to zero, so that a block copied from an
  image model starts as that model; its drop path comes before the fc, as in the reference."""

  def __init__(self, dim: int, num_heads: int, layout: TokenLayout, *, fc: bool,
               qkv_bias: bool = True, k_bias: bool = False, norm_eps: float = 1e-6,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.cls_token = layout.cls_token
    self.norm = LayerNorm(dim, eps=norm_eps, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, k_bias=k_bias,
                          attend=attend_within_positions,
                          layout=dataclasses.replace(layout, cls_token=False), dtype=dtype,
                          rngs=rngs)
    self.fc = Dense(dim, dim, ("embed", None), kernel_init=zeros, dtype=dtype,
                    rngs=rngs) if fc else None

  def __call__(self, x, rate: float, key):
    cls, x = (x[:, :1], x[:, 1:]) if self.cls_token else (None, x)
    residual = drop_path(self.attn(self.norm(x)), rate, key)
    x = x + (residual if self.fc is None else self.fc(residual))
    return x if cls is None else jnp.concatenate([cls, x], axis=1)


_TEMPORAL = re.compile(r"(.*blocks/\d+/)temporal/(attn|norm)/(.*)")


def temporal_from_spatial(name: str) -> tuple[str, ...]:
  """For a block's temporal attention or its norm (blocks/<i>/temporal/...), which an image
  model lacks, the block's spatial one (blocks/<i>/attn/..., blocks/<i>/norm1/...): init_from
  starts it as a copy. () for any other name."""
  temporal = _TEMPORAL.fullmatch(name)
  if not temporal:
    return ()
  prefix, part, rest = temporal.groups()
  return (f"{prefix}{'attn' if part == 'attn' else 'norm1'}/{rest}",)


@dataclasses.dataclass(frozen=True)
class SpaceTimeAttention:
  """A space-time attention variant of `Block`: the `attend` rule of its attention, and an
  optional temporal step (`TemporalAttention`) "before" or "after" that attention."""
  attend: Callable
  temporal: str = ""
  temporal_fc: bool = False


# config.model.attention -> variant. "space_only" and "factorised_encoder" are not block
# variants: those models run "joint" blocks over frames or time slices apart (timesformer.py,
# vivit.py).
ATTENTIONS = {
    "joint": SpaceTimeAttention(attend_all),
    # TimeSformer: time (+ temporal_fc), then space with the CLS token averaged over frames.
    "divided": SpaceTimeAttention(attend_within_frames, temporal="before", temporal_fc=True),
    # ViViT model 3: space, then time, each with its own LN and residual (the paper's order;
    # Scenic's block defaults to time first).
    "factorised_self": SpaceTimeAttention(attend_within_frames, temporal="after"),
    # ViViT model 4: one attention, half its heads over time, half over space.
    "factorised_dot": SpaceTimeAttention(attend_split_heads),
    # TPS plugged into a ViT: spatial attention over patch-shifted frames, in every block (the
    # Swin model, tps.py, alternates it with a channel shift).
    "patch_shift": SpaceTimeAttention(attend_patch_shift),
}

# config.model.remat -> what a block keeps for the backward pass ("none": everything, no
# recomputation). "full" keeps only its input and recomputes the rest; "dots" also keeps the
# outputs of matmuls without batch dimensions (qkv, projections, MLP) and recomputes attention
# scores and element-wise work.
REMAT = ("none", "full", "dots")
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN1 x)); x + DropPath(MLP(LN2 x)).

  `attention` (a key of ATTENTIONS) makes it a space-time variant over tokens laid out as
  `layout`: the attention's attend rule, and a temporal step before or after it. `remat`
  (one of REMAT) recomputes the block in the backward pass to save memory. CLIP's blocks take
  `quick_gelu=True, norm_eps=1e-5`.
  """

  def __init__(self, dim: int, num_heads: int, *, attention: str = "joint",
               layout: TokenLayout | None = None, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               k_bias: bool = False, approximate_gelu: bool = False, quick_gelu: bool = False,
               norm_eps: float = 1e-6, drop_path: float = 0.0, remat: str = "none",
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if attention not in ATTENTIONS:
      raise ValueError(f"attention {attention!r} is unknown; choose one of {sorted(ATTENTIONS)}")
    if remat not in REMAT:
      raise ValueError(f"remat {remat!r} is unknown; choose one of {REMAT}")
    variant = ATTENTIONS[attention]
    if variant.attend is not attend_all and layout is None:
      raise ValueError(f"attention {attention!r} needs the token layout")
    if variant.attend is attend_split_heads and num_heads % 2:
      raise ValueError(f"attention 'factorised_dot' splits the heads between time and space: "
                       f"num_heads={num_heads} must be even")
    self.drop_path, self.remat = drop_path, remat
    self.temporal_first = variant.temporal == "before"
    if variant.temporal:
      self.temporal = TemporalAttention(dim, num_heads, layout, fc=variant.temporal_fc,
                                        qkv_bias=qkv_bias, k_bias=k_bias, norm_eps=norm_eps,
                                        dtype=dtype, rngs=rngs)
    else:
      self.temporal = None
    self.norm1 = LayerNorm(dim, eps=norm_eps, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, k_bias=k_bias,
                          attend=variant.attend, layout=layout, dtype=dtype, rngs=rngs)
    self.norm2 = LayerNorm(dim, eps=norm_eps, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate_gelu=approximate_gelu,
                   quick_gelu=quick_gelu, dtype=dtype, rngs=rngs)

  def __call__(self, x, key=None):
    if self.remat == "none":
      return gradient_buffer(self._forward(x, key))
    return gradient_buffer(
        nnx.remat(Block._forward, policy=REMAT_POLICIES[self.remat])(self, x, key))

  def _forward(self, x, key):
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    k_time = jax.random.fold_in(key, 2) if key is not None else None
    if self.temporal is not None and self.temporal_first:
      x = self.temporal(x, self.drop_path, k_time)
    x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, k1)
    if self.temporal is not None and not self.temporal_first:
      x = self.temporal(x, self.drop_path, k_time)
    return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, k2)


def tubelets(video, patch):
  """[B, T, H, W, C] -> [B, N, pt*ph*pw, C]: tubelets in (t, h, w) token order, their pixels in
  (t, h, w) order. Reshapes only, so numpy arrays stay numpy."""
  b, t, h, w, c = video.shape
  pt, ph, pw = patch
  if t % pt or h % ph or w % pw:
    raise ValueError(f"video of {t}x{h}x{w} frames is not divisible by the tubelet size "
                     f"{pt}x{ph}x{pw}")
  x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw, c)


class TubeletEmbed(nnx.Module):
  """Non-overlapping (t, h, w) tubelets -> tokens: a Conv3d with kernel == stride.

  Computed as a reshape and one matmul (cheaper than a general convolution on every backend);
  the kernel keeps the Conv3d layout [kt, kh, kw, C, D] so converters map it directly. CLIP's
  patch embedding has no bias (`use_bias=False`).
  """

  def __init__(self, patch: tuple[int, int, int], channels: int, dim: int, *,
               use_bias: bool = True, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.patch, self.dtype = tuple(patch), dtype
    fan_in = int(np.prod(patch)) * channels
    init = lambda key, shape, dtype: xavier(key, (fan_in, dim), dtype).reshape(shape)
    self.kernel = param(rngs, init, (*self.patch, channels, dim),
                        (None, None, None, None, "embed"))
    self.bias = param(rngs, zeros, (dim,), ("embed",)) if use_bias else None

  def grid(self, video_shape) -> tuple[int, int, int]:
    """Token grid (T', H', W') for a [B, T, H, W, C] video."""
    return tuple(s // p for s, p in zip(video_shape[1:4], self.patch))

  def __call__(self, video, keep=None):
    """Tokens [B, N, D] in (t, h, w) order; with `keep` [B, K] only those tubelets are
    projected (masked ones cost nothing)."""
    x = tubelets(video.astype(self.dtype), self.patch)
    x = x.reshape(*x.shape[:2], -1)
    if keep is not None:
      x = jnp.take_along_axis(x, keep[..., None], axis=1)
    kernel = self.kernel[...].astype(self.dtype).reshape(-1, self.kernel.shape[-1])
    x = x @ kernel
    return x if self.bias is None else x + self.bias[...].astype(self.dtype)


def triple(value, name: str) -> tuple[int, int, int]:
  """(t, h, w) from an int (the same for all three) or a 3-sequence, as PyTorch's Conv3d takes
  its kernel size, stride and padding."""
  values = (value,) * 3 if isinstance(value, int) else tuple(value)
  if len(values) != 3 or any(not isinstance(v, int) for v in values):
    raise ValueError(f"{name}={value!r}: give an int or (t, h, w) ints")
  return values


# torchvision's ResNet init for convolutions: normal, std sqrt(2 / fan out), fan out =
# C_out x kT x kH x kW.
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# The logical axes of a convolution kernel's input and output channels.
CONV_AXES = ("conv_in", "conv_out")


class Conv3d(nnx.Module):
  """3-D convolution of video [B, T, H, W, C_in] -> [B, T', H', W', C_out], as PyTorch's Conv3d
  computes it: `padding` zeros on both sides of T, H and W, then the kernel every `stride`
  steps (T' = (T + 2 pT - kT) // sT + 1); `groups` cuts the channels into groups convolved
  apart (C_in groups: depthwise).

  The kernel is [kT, kH, kW, C_in / groups, C_out] (PyTorch's [C_out, C_in / groups, kT, kH,
  kW] transposed) with logical axes (None, None, None, *axes): the channels shard. A stem
  reading the 3 RGB channels passes axes=(None, "conv_out"): 3 splits over no mesh axis. No bias
  by default: the BatchNorm that follows most convolutions subtracts it again.
  """

  def __init__(self, c_in: int, c_out: int, kernel, *, stride=1, padding=0, groups: int = 1,
               use_bias: bool = False, axes: tuple[str | None, str | None] = CONV_AXES,
               kernel_init=he_normal_fan_out, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if c_in % groups or c_out % groups:
      raise ValueError(f"groups={groups} must divide the channels {c_in} -> {c_out}")
    self.stride, self.groups, self.dtype = triple(stride, "stride"), groups, dtype
    self.padding = tuple((p, p) for p in triple(padding, "padding"))
    self.kernel = param(rngs, kernel_init, (*triple(kernel, "kernel"), c_in // groups, c_out),
                        (None, None, None, *axes))
    self.bias = param(rngs, zeros, (c_out,), axes[1:]) if use_bias else None

  def __call__(self, x):
    x, kernel = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    if self.groups == 1 and jax.default_backend() == "cpu" and not _force_conv:
      kh, kw, c_in = kernel.shape[1:4]
      # XLA:CPU's 2-D convolution is its fastest where a kernel is spatial, at temporal stride 1,
      # except on few input channels: some RGB stems' widths run at 6-20 GFLOP/s.
      if kh * kw > 1 and self.stride[0] == 1 and c_in >= 16:
        y = conv3d_by_frames(x, kernel, self.stride, self.padding)
      else:
        y = conv3d_as_matmul(x, kernel, self.stride, self.padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, self.stride, self.padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
          feature_group_count=self.groups)
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def _shifted_slices(x, kernel_size, stride, padding):
  """(tap, the input [B, T', H', W', C] that tap meets at every output position) for each tap of
  a kernel of `kernel_size` (t, h, w): strided slices of x padded by `padding` ((lo, hi) per
  axis)."""
  b, *size, c = x.shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out = [(n + lo + hi - k) // s + 1
         for n, k, (lo, hi), s in zip(size, kernel_size, padding, stride)]
  for tap in np.ndindex(*kernel_size):
    end = [t + (o - 1) * s + 1 for t, o, s in zip(tap, out, stride)]
    yield tap, jax.lax.slice(x, (0, *tap, 0), (b, *end, c), (1, *stride, 1))


def _tap_columns(x, kernel_size, stride, padding):
  """The kernel's taps of x side by side on the channels as a [positions, taps x C_in] matrix
  (2-D: XLA:CPU multiplies it 1.1-2x as fast as the same product over 5-D arrays), and the
  output's [B, T', H', W']."""
  taps = [piece for _, piece in _shifted_slices(x, kernel_size, stride, padding)]
  columns = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return columns.reshape(-1, columns.shape[-1]), columns.shape[:-1]


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def conv3d_as_matmul(x, kernel, stride, padding):
  """conv_general_dilated(x, kernel) of Conv3d as one matrix product: the kernel's taps of x
  (shifted, strided slices) side by side on the channels, times the kernel as a [taps x C_in,
  C_out] matrix. Forward and backward, XLA:CPU's convolution takes 14-77x as long where it
  strides (its input gradient is a dilated convolution) and 1.6-2x where it does not
  (BENCHMARKS.md, "Video CNN training steps"); here the backward pass is two matrix products
  and the slices' transposes. Checkpointed: the backward pass rebuilds the taps instead of
  keeping a copy of x per tap."""
  columns, positions = _tap_columns(x, kernel.shape[:3], stride, padding)
  return (columns @ kernel.reshape(-1, kernel.shape[-1])).reshape(*positions, kernel.shape[-1])


def _frame_convolutions(x, kernel, stride, padding):
  """Conv3d of temporal stride 1 as a sum over the kernel's temporal taps of 2-D convolutions of
  the frames [B x T', H, W, C]."""
  (t_lo, t_hi), *spatial = padding
  x = jnp.pad(x, ((0, 0), (t_lo, t_hi), (0, 0), (0, 0), (0, 0)))
  b, t, h, w, c = x.shape
  frames = t - kernel.shape[0] + 1
  first, *rest = (
      jax.lax.conv_general_dilated(x[:, dt:dt + frames].reshape(b * frames, h, w, c), kernel[dt],
                                   stride[1:], spatial, dimension_numbers=("NHWC", "HWIO", "NHWC"))
      for dt in range(kernel.shape[0]))
  y = sum(rest, first)
  return y.reshape(b, frames, *y.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv3d_by_frames(x, kernel, stride, padding):
  """conv_general_dilated(x, kernel) of Conv3d (temporal stride 1) for XLA:CPU: forward and input
  gradient as 2-D convolutions of the frames, which XLA:CPU runs at 80-100 GFLOP/s on one core
  where its 3-D convolution takes about twice as long; the kernel gradient as
  `conv3d_as_matmul`'s, one matrix product, where the 2-D convolution's is slower still
  (BENCHMARKS.md, "Video CNN training steps")."""
  return _frame_convolutions(x, kernel, stride, padding)


def _by_frames_forward(x, kernel, stride, padding):
  return _frame_convolutions(x, kernel, stride, padding), (x, kernel)


def _by_frames_backward(stride, padding, residuals, grad):
  x, kernel = residuals
  x_grad, = jax.linear_transpose(lambda x: _frame_convolutions(x, kernel, stride, padding), x)(grad)
  columns, _ = _tap_columns(x, kernel.shape[:3], stride, padding)
  kernel_grad = columns.T @ grad.reshape(-1, kernel.shape[-1])
  return x_grad, kernel_grad.reshape(kernel.shape)


conv3d_by_frames.defvjp(_by_frames_forward, _by_frames_backward)


def max_pool3d(x, window, stride, padding):
  """PyTorch's MaxPool3d of x [B, T, H, W, C]: `padding` (t, h, w) on both sides counts as
  -inf, so a padded window takes the maximum of its real values."""
  pads = ((0, 0), *((p, p) for p in padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), pads)


def head_window(frames: int, crop: int, stride: int) -> tuple[int, int, int]:
  """(T, H, W) of a network's final map at its training clip (`frames` after any temporal
  pooling; a `crop`^2 crop), its spatial `stride` made of stride-2 steps that each round up:
  the window a head pools at larger eval crops (`window_average`)."""
  side = -(-crop // stride)
  return frames, side, side


def window_average(x, window):
  """The averages of x [B, T, H, W, C] over every (t, h, w) `window` at stride 1, no padding:
  [B, T - t + 1, H - h + 1, W - w + 1, C], pytorchvideo's AvgPool3d(window, stride=1) head pool.
  A convolutional head trained at one clip size pools the final map of that clip (one window)
  and, on a larger crop, averages its outputs over the window positions, as pytorchvideo's
  and PySlowFast's test-time heads do. The window is clipped to the map: a map no larger than it
  (the training clip, or smaller; window None: always) gives one position, its plain mean."""
  size = x.shape[1:4]
  window = size if window is None else tuple(min(w, n) for w, n in zip(window, size))
  if window == size:
    return x.mean(axis=(1, 2, 3), keepdims=True)
  total = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, *window, 1),
                                (1,) * 5, "VALID")
  return total / math.prod(window)


_force_conv = False  # set by convolutions()


@contextlib.contextmanager
def convolutions():
  """Conv3d's and `depthwise_conv3d`'s traced inside are convolutions on every machine, not
  their XLA:CPU formulations. For MAC counts that find the convolutions in the traced program
  (vidtx.tools.flops.count). A function jit traced before keeps its cached trace: trace a new
  one inside."""
  global _force_conv
  _force_conv = True
  try:
    yield
  finally:
    _force_conv = False


def depthwise_conv3d(x, kernel, stride, padding):
  """PyTorch's Conv3d with groups = channels on x [B, T, H, W, C], kernel [kT, kH, kW, 1, C],
  zero `padding` on both sides of T, H and W. On XLA:CPU, whose grouped convolutions run ~10x
  slower than a plain sum, it is the sum over the kernel's taps of shifted, strided slices
  times per-channel weights (one fusion; measured in conv_and_mvit.md), with its gradients
  written out (`_depthwise_taps`); elsewhere (and inside `convolutions()`) the convolution."""
  stride, padding = tuple(stride), tuple((p, p) for p in padding)
  if jax.default_backend() != "cpu" or _force_conv:
    return jax.lax.conv_general_dilated(
        x, kernel, stride, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=x.shape[-1])
  return _depthwise_taps(x, kernel, stride, padding)


def _tap_sum(x, kernel, stride, padding):
  """The sum over the kernel's [kT, kH, kW, 1, C] taps of x's shifted, strided slices times the
  tap's per-channel weights."""
  y = 0
  for tap, piece in _shifted_slices(x, kernel.shape[:3], stride, padding):
    y = y + piece * kernel[(*tap, 0)]
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_taps(x, kernel, stride, padding):
  """`_tap_sum` with its gradients written out: autodiff of the sum pads a full-size array per
  tap (27 per 3x3x3 layer) and keeps every tap's slice: X3D-S's step took 1.7x the FLOPs
  (BENCHMARKS.md, "Video CNN training steps")."""
  return _tap_sum(x, kernel, stride, padding)


def _depthwise_taps_forward(x, kernel, stride, padding):
  return _tap_sum(x, kernel, stride, padding), (x, kernel)


def _depthwise_taps_backward(stride, padding, residuals, grad):
  x, kernel = residuals
  # The input's gradient is the same sum over the output's gradient spread out by the stride
  # and padded by k - 1 - lo before (n + lo - 1 - (o - 1) s after; negative pads cut), with the
  # kernel flipped.
  pads = [(0, 0, 0)]
  for n, o, k, s, (lo, _) in zip(x.shape[1:4], grad.shape[1:4], kernel.shape[:3], stride,
                                 padding):
    pads.append((k - 1 - lo, n + lo - 1 - (o - 1) * s, s - 1))
  spread = jax.lax.pad(grad, jnp.zeros((), grad.dtype), (*pads, (0, 0, 0)))
  x_grad = _tap_sum(spread, kernel[::-1, ::-1, ::-1], (1, 1, 1), ((0, 0),) * 3)
  # The kernel's gradient: each tap's slices rebuilt from x (not kept) times the gradient.
  kernel_grad = jnp.stack([jnp.sum(piece * grad, axis=(0, 1, 2, 3))
                           for _, piece in _shifted_slices(x, kernel.shape[:3], stride, padding)])
  return x_grad.astype(x.dtype), kernel_grad.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_taps.defvjp(_depthwise_taps_forward, _depthwise_taps_backward)


class BatchNorm(nnx.Module):
  """PyTorch's BatchNorm over the channels (last axis) of x [..., C], in float32, returned in
  x's dtype.

  `train=True` normalises with the batch's mean and biased variance over every axis but the
  channels (under jit with a batch-sharded mesh: the global batch), and moves the running
  averages `momentum` of the way towards the batch's mean and unbiased variance. `train=False`
  normalises with the running averages. They are `nnx.BatchStat`s `mean` and `var` (start 0
  and 1), with the logical axis of the scale and bias, so they shard and checkpoint alike.

  Three settings, which `configure_batchnorm` sets for a whole model from config.model.bn:
  - `group_size` N > 0: statistics over each group of N consecutive clips instead (PySlowFast's
    BN.NUM_SYNC_DEVICES), x's leading axis being the clips; each group is normalised exactly as
    if computed apart, and the running averages move towards the mean over the groups of their
    statistics;
  - `frozen`: training normalises with the running averages and leaves them unchanged;
  - `unbiased_var=False`: the running variance takes the biased batch variance (precise BN
    collects the batch's moments this way, with momentum 1).
  """

  def __init__(self, dim: int, *, momentum: float = 0.1, eps: float = 1e-5, rngs: nnx.Rngs):
    if not 0 <= momentum <= 1:
      raise ValueError(f"BatchNorm momentum={momentum} must be in [0, 1] (PyTorch's: 0.1)")
    self.momentum, self.eps = momentum, eps
    self.group_size, self.frozen, self.unbiased_var = 0, False, True
    self.scale = param(rngs, ones, (dim,), ("norm",))
    self.bias = param(rngs, zeros, (dim,), ("norm",))
    stat = lambda value: nnx.BatchStat(jnp.full((dim,), value, jnp.float32),
                                       out_sharding=("norm",), eager_sharding=False)
    self.mean, self.var = stat(0.0), stat(1.0)

  def __call__(self, x, train: bool):
    if train and not self.frozen:
      clips = x.shape[0]
      group = self.group_size or clips
      count = group * (x.size // clips // x.shape[-1])  # values per channel in a group
      if clips % group or count < 2:
        raise ValueError(f"BatchNorm in training needs groups of group_size={self.group_size} "
                         f"clips (0: all) that divide the batch and hold more than one value "
                         f"per channel, got an input of shape {x.shape}")
      groups = clips // group
      # [groups, clips per group, ..., C]: statistics over all but the first and last axes.
      y, mean, var = batch_norm_train(x.reshape(groups, group, *x.shape[1:]), self.scale[...],
                                      self.bias[...], self.eps)
      m = self.momentum
      correction = count / (count - 1) if self.unbiased_var else 1.0
      self.mean[...] = (1 - m) * self.mean[...] + m * mean.reshape(groups, -1).mean(0)
      self.var[...] = ((1 - m) * self.var[...]
                       + m * var.reshape(groups, -1).mean(0) * correction)
      return y.reshape(x.shape)
    rstd = jax.lax.rsqrt(self.var[...] + self.eps)
    y = (x.astype(jnp.float32) - self.mean[...]) * rstd * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


def _group_moments(g, eps):
  """The mean and biased variance of g [groups, ..., C] over all but its first and last axes
  (kept as 1s), in float32, two-pass; and 1 / sqrt(variance + eps)."""
  g = g.astype(jnp.float32)
  axes = tuple(range(1, g.ndim - 1))
  mean = g.mean(axes, keepdims=True)
  var = jnp.square(g - mean).mean(axes, keepdims=True)
  return mean, var, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(g, scale, bias, eps):
  """BatchNorm in training of g [groups, ..., C], each group normalised with its own statistics
  then scaled and shifted per channel: (y in g's dtype, mean, biased variance), the statistics
  [groups, 1, ..., 1, C] in float32. The gradient is written out (two means per channel, then one
  elementwise pass) where autodiff of the formula makes five to seven passes over the
  activation; the statistics get none, since they only move the running averages."""
  return _batch_norm_train_forward(g, scale, bias, eps)[0]


def _batch_norm_train_forward(g, scale, bias, eps):
  mean, var, rstd = _group_moments(g, eps)
  y = (g.astype(jnp.float32) - mean) * rstd * scale + bias
  return (y.astype(g.dtype), mean, var), (g, mean, rstd, scale)


def _batch_norm_train_backward(eps, residuals, cotangents):
  g, mean, rstd, scale = residuals
  dy = cotangents[0].astype(jnp.float32)
  normalised = (g.astype(jnp.float32) - mean) * rstd
  axes = tuple(range(1, g.ndim - 1))
  count = math.prod(g.shape[1:-1])
  mean_dy = dy.mean(axes, keepdims=True)
  mean_dy_normalised = (dy * normalised).mean(axes, keepdims=True)
  dg = (dy - mean_dy - normalised * mean_dy_normalised) * (rstd * scale)
  per_channel = lambda m: count * m.reshape(-1, m.shape[-1]).sum(0)
  return dg.astype(g.dtype), per_channel(mean_dy_normalised), per_channel(mean_dy)


batch_norm_train.defvjp(_batch_norm_train_forward, _batch_norm_train_backward)


def batchnorms(model: nnx.Module) -> list[BatchNorm]:
  """The model's BatchNorm layers, in a fixed order."""
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]


def configure_batchnorm(model: nnx.Module, bn) -> int:
  """Applies config.model.bn (momentum and eps where set, group_size, frozen) to every
  BatchNorm of the model; returns how many there are."""
  layers = batchnorms(model)
  for layer in layers:
    if bn.momentum is not None:
      layer.momentum = bn.momentum
    if bn.eps is not None:
      layer.eps = bn.eps
    layer.group_size, layer.frozen = bn.group_size, bn.frozen
  return len(layers)


class ConvBatchNorm(nnx.Module):
  """Conv3d (no bias) -> BatchNorm -> `activation` (None: none, as before a residual sum): the
  unit 3-D CNNs are built of. Returns the conv's compute dtype. `momentum` and `eps` are the
  BatchNorm's (PyTorch's defaults; torchvision's S3D uses 0.001 and 0.001)."""

  def __init__(self, c_in: int, c_out: int, kernel, *, stride=1, padding=0, groups: int = 1,
               activation: Callable | None = jax.nn.relu,
               axes: tuple[str | None, str | None] = CONV_AXES, momentum: float = 0.1,
               eps: float = 1e-5, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.activation = activation
    self.conv = Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups,
                       axes=axes, dtype=dtype, rngs=rngs)
    self.norm = BatchNorm(c_out, momentum=momentum, eps=eps, rngs=rngs)

  def __call__(self, x, train: bool):
    y = self.norm(self.conv(x), train)
    return y if self.activation is None else self.activation(y)


def sincos_1d(num_positions: int, dim: int) -> np.ndarray:
  """The fixed 1-D sinusoid table of VideoMAE: PE[n, 2i] = sin(n / 10000^(2i/D)), PE[n, 2i+1] = cos."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  rates = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
  angles = pos / rates
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
  return table.astype(np.float32)


class LearnedPosEmbed(nnx.Module):
  def __init__(self, num_positions: int, dim: int, *, init=trunc_normal, rngs: nnx.Rngs):
    self.embedding = param(rngs, init, (num_positions, dim), (None, "embed"))

  def table(self):
    """[positions, D]; models add the rows of the tokens they keep."""
    return self.embedding[...]


class SinCosPosEmbed(nnx.Module):
  """Fixed sinusoidal position embedding (no parameters)."""

  def __init__(self, num_positions: int, dim: int):
    self.num_positions, self.dim = num_positions, dim

  def table(self):
    return jnp.asarray(sincos_1d(self.num_positions, self.dim))


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Linearly increasing stochastic depth over the blocks, 0 for the first."""
  return [rate * i / max(depth - 1, 1) for i in range(depth)] if depth else []


def block_keys(key, depth: int):
  return list(jax.random.split(key, depth)) if key is not None else [None] * depth


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
