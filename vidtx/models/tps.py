"""TPS (Xiang et al., 2022): a 2-D Swin Transformer over the frames of a clip, made
spatiotemporal by Temporal Patch Shift, at the cost of the 2-D model.

Follows MartinXM/TPS `mmaction/models/backbones/swin_transformer2d_tps.py` (SYSTEMS.md §3):
- A Conv3d (2, 4, 4) patch embedding + LayerNorm: 32 x 224^2 -> 16 x 56 x 56 tokens.
- Four stages of Swin blocks over per-frame 1 x 7 x 7 windows, each stage but the last ending
  in a spatial-only patch merging (2 x 2 neighbours -> LN -> Linear 4C -> 2C). Odd blocks use
  windows shifted by (0, 3, 3) with Swin's attention mask; a grid no larger than the window is
  one unshifted window (the last stage at 224^2).
- Before the qkv projection of every block the windowed tokens are shifted in time:
  - even blocks, channel shift: in each head, channels [0, d/8) take frame t-1 and
    [d/8, d/4) frame t+1; the first/last frame keeps its own; not undone;
  - odd blocks, patch shift ("pattern C", all channels): the token at window position
    (i, j) takes frame (t - s) mod T with s = layers.PATCH_SHIFT_PATTERN[i % 3, j % 3], so each
    3 x 3 tile sees frames t-4 .. t+4; the attention output (attn @ v, before the output
    projection) is shifted back.
- Relative position bias: a table of (2T-1) x (2w-1) x (2w-1) rows x heads (Δt major), T the
  number of token frames (num_frames / 2; the reference hard-codes T = 16, the same table at
  32 frames). Patch-shift blocks index Δt by the tokens' source frames, src(q) - src(k), which
  differs from frame to frame where the cyclic shift wraps; channel-shift blocks (and blocks
  without shift) use the Δt = 0 rows. (The reference takes the key's source frame as if it
  were in frame 0, and so gives channel-shift blocks the Δt = t rows; we follow SYSTEMS.md.
  Both agree on weights inflated from ImageNet, where every Δt row is the same 2-D table.)
- Head: final LN, average pool over time and space, dropout, Linear.

`shift=False` (config.model.attention="space_only") turns the temporal shifts off: each frame
then goes through a plain 2-D Swin (HF `SwinModel`) apart, the ablation baseline.
Parameters are the reference's with our layers' names and layouts; a model trained from
scratch takes our layers' initialisers (TPS always starts from ImageNet Swin weights,
`vidtx.weights.swin`). LayerNorm eps 1e-5 as in the reference.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family
from vidtx.weights import swin

# config.model.size -> (C, blocks per stage, heads of the first stage); widths and heads
# double at every stage.
SIZES = {
    "swin_t": (96, (2, 2, 6, 2), 3),
    "swin_b": (128, (2, 2, 18, 2), 4),
}
ATTENTIONS = ("patch_shift", "space_only")
LN_EPS = 1e-5
MASKED = -100.0  # logit added across shifted-window boundaries (Swin's value)


def size(model_config: ml_collections.ConfigDict) -> tuple[int, tuple[int, ...], int]:
  """(C, blocks per stage, first-stage heads) of the configured size, unless overridden by
  model.width, model.tps.stage_depths and model.num_heads."""
  width, depths, heads = SIZES[model_config.size]
  return (model_config.width or width, tuple(model_config.tps.stage_depths) or depths,
          model_config.num_heads or heads)


def stage_window(resolution: int, window: int) -> tuple[int, int]:
  """(window, shift) at a resolution x resolution grid: a window as large as the grid is the
  whole grid and is not shifted (Swin)."""
  return (resolution, 0) if resolution <= window else (window, window // 2)


@functools.lru_cache
def relative_position_index(frames: int, window: int, patch_shift: bool) -> np.ndarray:
  """Rows of the bias table for each (query, key) pair of a w x w window: [T, N, N] for
  patch-shift blocks (Δt = src(q) - src(k), the tokens' source frames), [N, N] at Δt = 0
  otherwise. Row = (Δt + T-1) (2w-1)^2 + (Δh + w-1) (2w-1) + (Δw + w-1)."""
  i, j = np.divmod(np.arange(window * window), window)
  side = 2 * window - 1
  spatial = (i[:, None] - i[None] + window - 1) * side + (j[:, None] - j[None] + window - 1)
  if not patch_shift:
    return (frames - 1) * side * side + spatial
  src = layers.patch_shift_sources(frames, window, window)  # [T, N]
  dt = src[:, :, None] - src[:, None, :]
  return (dt + frames - 1) * side * side + spatial[None]


@functools.lru_cache
def shifted_window_mask(resolution: int, window: int, shift: int) -> np.ndarray | None:
  """[windows, N, N] logits to add in shifted windows: MASKED between tokens that the cyclic
  roll brought together from opposite edges of the grid; None without shift."""
  if not shift:
    return None
  region = np.zeros((resolution, resolution), np.int32)
  bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for a, rows in enumerate(bands):
    for b, cols in enumerate(bands):
      region[rows, cols] = 3 * a + b
  n = resolution // window
  region = region.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, -1)
  return np.where(region[:, :, None] == region[:, None, :], 0.0, MASKED).astype(np.float32)


def window_partition(x, window: int):
  """[B, T, H, W, C] -> [B, windows, T, w*w, C], windows in (row, column) order."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // window, window, w // window, window, c)
  return x.transpose(0, 2, 4, 1, 3, 5, 6).reshape(b, -1, t, window * window, c)


def window_merge(windows, height: int, width: int):
  """The inverse of `window_partition`."""
  b, _, t, n, c = windows.shape
  window = int(np.sqrt(n))
  x = windows.reshape(b, height // window, width // window, t, window, window, c)
  return x.transpose(0, 3, 1, 4, 2, 5, 6).reshape(b, t, height, width, c)


class WindowAttention(layers.Attention):
  """Multi-head attention within each frame's w x w windows, with a relative position bias
  over (Δt, Δh, Δw) and, in patch-shift blocks, TPS's shift around it. Same q/k/v/proj
  parameters as `layers.Attention` (q, k and v biases, as Swin)."""

  def __init__(self, dim: int, num_heads: int, *, frames: int, window: int,
               dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(dim, num_heads, k_bias=True, dtype=dtype, rngs=rngs)
    self.frames, self.window = frames, window
    rows = (2 * frames - 1) * (2 * window - 1) ** 2
    self.relative_position_bias_table = layers.param(rngs, layers.trunc_normal,
                                                     (rows, num_heads), (None, "heads"))

  def bias(self, patch_shift: bool):
    """[T, heads, N, N] (patch shift: each frame its own) or [heads, N, N], float32."""
    index = relative_position_index(self.frames, self.window, patch_shift)
    return jnp.moveaxis(self.relative_position_bias_table[...][index], -1, -3)

  def __call__(self, windows, *, mask=None, patch_shift: bool = False):
    """windows [B, windows, T, N, C] -> same; `mask` [windows, N, N] of shifted windows."""
    b, num_windows, t, n, c = windows.shape
    x = windows.reshape(b * num_windows, t, n, c)
    if patch_shift:  # on the normed tokens, before qkv: q, k and v all see the shifted frames
      x = layers.patch_shift(x, self.window, self.window)
    qkv = x.reshape(-1, c).astype(self.dtype) @ self.qkv[...].astype(self.dtype).reshape(c, -1)
    qkv = qkv.reshape(b * num_windows, t, n, 3, self.num_heads, self.head_dim)
    q, k, v = (self._add_bias(qkv[..., i, :, :], bias)
               for i, bias in enumerate((self.q_bias, self.k_bias, self.v_bias)))
    logits = jnp.einsum("xtqhd,xtkhd->xthqk", q * self.head_dim ** -0.5, k)
    logits = logits.astype(jnp.float32) + self.bias(patch_shift)
    if mask is not None:
      logits = logits.reshape(b, num_windows, t, self.num_heads, n, n) + mask[:, None, None]
      logits = logits.reshape(b * num_windows, t, self.num_heads, n, n)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("xthqk,xtkhd->xtqhd", weights, v)
    if patch_shift:  # each head's attn @ v back to its own frame
      out = layers.patch_shift(out, self.window, self.window, inverse=True)
    out = out.reshape(-1, c) @ self.proj[...].astype(self.dtype).reshape(-1, c)
    out = out + self.proj_bias[...].astype(self.dtype)
    return out.reshape(b, num_windows, t, n, c)


class SwinBlock(nnx.Module):
  """x + DropPath(WindowAttention(shift(LN x))); x + DropPath(MLP(LN x)) on [B, T, H, W, C].

  `temporal`: "channel" (even blocks), "patch" (odd blocks) or "none" (a plain Swin block).
  `shift`: Swin's cyclic window shift (0 for even blocks)."""

  def __init__(self, dim: int, num_heads: int, *, frames: int, resolution: int, window: int,
               shift: int, temporal: str, mlp_ratio: float = 4.0, drop_path: float = 0.0,
               remat: str = "none", dtype=jnp.float32, rngs: nnx.Rngs):
    if temporal not in ("channel", "patch", "none"):
      raise ValueError(f"temporal={temporal!r}: use 'channel', 'patch' or 'none'")
    self.num_heads, self.resolution, self.window, self.shift = num_heads, resolution, window, shift
    self.temporal, self.drop_path, self.remat = temporal, drop_path, remat
    self.norm1 = layers.LayerNorm(dim, eps=LN_EPS, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, frames=frames, window=window, dtype=dtype,
                                rngs=rngs)
    self.norm2 = layers.LayerNorm(dim, eps=LN_EPS, rngs=rngs)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x, key=None):
    if self.remat == "none":
      return layers.gradient_buffer(self._forward(x, key))
    return layers.gradient_buffer(nnx.remat(
        SwinBlock._forward, policy=layers.REMAT_POLICIES[self.remat])(self, x, key))

  def _forward(self, x, key):
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    _, _, h, w, _ = x.shape
    y = self.norm1(x)
    if self.temporal == "channel":  # per token, so the same on the grid as on windows
      y = layers.channel_shift(y, self.num_heads)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(2, 3))
    mask = shifted_window_mask(self.resolution, self.window, self.shift)
    y = self.attn(window_partition(y, self.window), mask=None if mask is None else
                  jnp.asarray(mask), patch_shift=self.temporal == "patch")
    y = window_merge(y, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(2, 3))
    x = x + layers.drop_path(y, self.drop_path, k1)
    return x + layers.drop_path(self.mlp(self.norm2(x)), self.drop_path, k2)


class PatchMerging(nnx.Module):
  """Each 2 x 2 neighbourhood of a frame -> LN(4C) -> Linear(4C, 2C) without bias."""

  def __init__(self, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(4 * dim, eps=LN_EPS, rngs=rngs)
    self.reduction = layers.Dense(4 * dim, 2 * dim, (None, "embed"), use_bias=False,
                                  dtype=dtype, rngs=rngs)

  def __call__(self, x):
    # Swin's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
    x = jnp.concatenate([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2],
                         x[:, :, 1::2, 1::2]], axis=-1)
    return self.reduction(self.norm(x))


class Stage(nnx.Module):
  """Swin blocks at one resolution, then (but in the last stage) patch merging."""

  def __init__(self, dim: int, depth: int, num_heads: int, *, frames: int, resolution: int,
               window: int, shift: bool, downsample: bool, drop_paths, mlp_ratio: float,
               remat: str, dtype, rngs: nnx.Rngs):
    window, shift_size = stage_window(resolution, window)
    if resolution % window:
      raise ValueError(f"the {resolution}x{resolution} token grid is not divisible by the "
                       f"{window}x{window} windows: choose data.crop_size and "
                       "model.tps.window_size so that crop / patch / 2^stage is a multiple of the "
                       "window at every stage (e.g. 224, patch 4, window 7)")
    if downsample and resolution % 2:
      raise ValueError(f"patch merging needs an even grid, not {resolution}x{resolution}: "
                       "choose data.crop_size = patch x window x 2^(stages - 1)")

    def temporal(i):
      return "none" if not shift else ("channel" if i % 2 == 0 else "patch")

    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, frames=frames, resolution=resolution, window=window,
                  shift=0 if i % 2 == 0 else shift_size, temporal=temporal(i),
                  mlp_ratio=mlp_ratio, drop_path=rate, remat=remat, dtype=dtype, rngs=rngs)
        for i, rate in zip(range(depth), drop_paths)
    ])
    self.downsample = PatchMerging(dim, dtype=dtype, rngs=rngs) if downsample else None

  def __call__(self, x, key=None):
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    return x if self.downsample is None else self.downsample(x)


class SwinTPS(nnx.Module):
  """The backbone: video [B, T, H, W, 3] -> normed features [B, T/2, H/32, W/32, 8C]."""

  def __init__(self, *, num_frames: int, image_size: int, patch_size=(2, 4, 4),
               width: int = 96, depths=(2, 2, 6, 2), num_heads: int = 3, window: int = 7,
               mlp_ratio: float = 4.0, shift: bool = True, drop_path: float = 0.0,
               remat: str = "none", dtype=jnp.float32, rngs: nnx.Rngs):
    self.patch_embed = layers.TubeletEmbed(patch_size, 3, width, dtype=dtype, rngs=rngs)
    self.grid = self.patch_embed.grid((1, num_frames, image_size, image_size, 3))
    self.patch_norm = layers.LayerNorm(width, eps=LN_EPS, rngs=rngs)
    frames, resolution, _ = self.grid
    rates = layers.drop_path_rates(drop_path, sum(depths))  # 0 .. drop_path over all blocks
    stages = []
    for i, depth in enumerate(depths):
      first = sum(depths[:i])
      stages.append(Stage(
          width * 2 ** i, depth, num_heads * 2 ** i, frames=frames,
          resolution=resolution // 2 ** i, window=window, shift=shift,
          downsample=i < len(depths) - 1, drop_paths=rates[first:first + depth],
          mlp_ratio=mlp_ratio, remat=remat, dtype=dtype, rngs=rngs))
    self.stages = nnx.List(stages)
    self.num_features = width * 2 ** (len(depths) - 1)
    self.norm = layers.LayerNorm(self.num_features, eps=LN_EPS, rngs=rngs)

  def __call__(self, video, key=None):
    if tuple(video.shape[1:4]) != tuple(s * p for s, p in zip(self.grid, self.patch_embed.patch)):
      raise ValueError(f"TPS was built for clips of {self.grid[0] * self.patch_embed.patch[0]} "
                       f"frames of {self.grid[1] * self.patch_embed.patch[1]}^2 (its bias tables "
                       f"and windows), got {tuple(video.shape[1:4])}: set config.data.num_frames "
                       "and data.crop_size")
    b = video.shape[0]
    x = self.patch_norm(self.patch_embed(video)).reshape(b, *self.grid, -1)
    for stage, stage_key in zip(self.stages, layers.block_keys(key, len(self.stages))):
      x = stage(x, stage_key)
    return self.norm(x)


class TPS(nnx.Module):
  """SwinTPS backbone + average pool + dropout + Linear (the reference's I3DHead)."""

  def __init__(self, *, num_classes: int, head_dropout: float = 0.5,
               head_init_scale: float = 1.0, rngs: nnx.Rngs, **backbone):
    self.head_dropout = head_dropout
    self.backbone = SwinTPS(rngs=rngs, **backbone)
    head_init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * head_init_scale
    self.head = layers.Dense(self.backbone.num_features, num_classes, ("embed", "classes"),
                             kernel_init=head_init, rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]; `key` drives drop path and
    dropout and is only used when `train`. TPS sees every token: `keep` must be None."""
    if keep is not None:
      raise ValueError("TPS sees every token: set config.model.masking='none'")
    key = key if train else None
    backbone_key, dropout_key = jax.random.split(key) if key is not None else (None, None)
    x = self.backbone(video, backbone_key)
    x = x.astype(jnp.float32).mean(axis=(1, 2, 3))
    x = layers.dropout(x, self.head_dropout, dropout_key)
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> TPS:
  width, depths, heads = size(model_config)
  return TPS(
      num_classes=data_config.num_classes, num_frames=data_config.num_frames,
      image_size=data_config.crop_size, patch_size=tuple(model_config.patch_size), width=width,
      depths=depths, num_heads=heads, window=model_config.tps.window_size,
      mlp_ratio=model_config.mlp_ratio, shift=model_config.attention == "patch_shift",
      drop_path=model_config.drop_path, head_dropout=model_config.head_dropout,
      head_init_scale=model_config.head_init_scale, remat=model_config.remat,
      dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # A Swin over frames: model.patch_size (2, p, p) (TPS: (2, 4, 4)); model.width is the first
  # stage's C and model.num_heads its heads (both double at every stage).
  s = ml_collections.ConfigDict()
  s.window_size = 7  # side of the per-frame attention windows
  s.stage_depths = ()  # blocks per stage; (): the size's (swin_t 2-2-6-2, swin_b 2-2-18-2)
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  m, d, s = config.model, config.data, config.model.tps
  if (not isinstance(s.stage_depths, (tuple, list))
      or any(not isinstance(n, int) or n < 1 for n in s.stage_depths)):
    errors.fail("model.tps.stage_depths", s.stage_depths, "give blocks per stage, e.g. "
                "(2, 2, 6, 2), or () for the size's")
  width, depths, heads = size(m)
  if width % heads:
    errors.fail("model.width", width, f"must be divisible by model.num_heads={heads}")
  if len(m.patch_size) != 3 or m.patch_size[1] != m.patch_size[2]:
    errors.fail("model.patch_size", m.patch_size, "TPS embeds square patches of a few frames: "
                "use (t, p, p), e.g. (2, 4, 4)")
  if s.window_size < 1:
    errors.fail("model.tps.window_size", s.window_size, "must be at least 1 (Swin: 7)")
  resolution = d.crop_size // m.patch_size[1]
  for i in range(len(depths)):
    window, _ = stage_window(resolution, s.window_size)
    if resolution % window or (i < len(depths) - 1 and resolution % 2):
      errors.fail("data.crop_size", d.crop_size, f"stage {i}'s {resolution}x{resolution} token "
                  f"grid must be a multiple of its {window}x{window} windows, and even before "
                  "patch merging: use crop_size = patch x window x 2^(stages - 1), e.g. 224 = "
                  "4 x 7 x 8")
    resolution //= 2
  if m.attention == "patch_shift" and width // heads < 8:
    errors.fail("model.num_heads", heads, f"the channel shift moves 1/8 of each head's channels: "
                f"model.width / model.num_heads = {width // heads} must be at least 8")


FAMILY = Family(
    name="tps",
    build=build,
    sizes=SIZES,
    reads=("size", "width", "num_heads", "mlp_ratio", "patch_size", "attention", "remat",
           "drop_path", "head_dropout", "head_init_scale", "dtype"),
    section=section,
    check=_check,
    # patch_shift: TPS; space_only: the same Swin without the shifts, each frame apart.
    attentions=ATTENTIONS,
    tubelets=True,
    converters=(swin.SWIN,),  # ImageNet Swin, inflated
)
