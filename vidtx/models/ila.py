"""ILA: Implicit Learnable Alignment (Tu et al., ICCV 2023) on a CLIP ViT.

Follows Francis-Rings/ILA (`models/align.py`, `models/mat.py`; SYSTEMS.md §4). A CLIP image
tower (`clip.CLIPVision`) encodes every frame; before each of its blocks an ILA module lets
adjacent frames exchange information. For tokens x [B T, 1 + H W, D] (frames in the batch):

1. u = LN(Linear(x)) ("message" fc and LN); pairs of adjacent frames P = u[t], Q = u[t + 1].
2. Interaction: the patch tokens of P and Q, concatenated on channels [B (T-1), H, W, 2D], map
   to Z with C = 256 channels (`channels`, smaller only for CPU tests).
   `interaction="separable"` (the K400 code): depthwise 3x3 + BN + ReLU, 1x1 to C + BN + ReLU,
   3x3 + BN + ReLU. "dense" (the SSv2 branch): 3x3 to C and 3x3 C -> C, each + BN + ReLU.
3. Interactive points (`PointHead`): two conv + BN + max-pool + ReLU stages, a global max,
   then two grouped 1x1 convs (groups 2: one half per frame of the pair), tanh x 0.75. The last
   one is zero-initialised, so both points start at the centre.
4. Alignment mask (`alignment_mask`): M[y, x] = w(g_y - p_y) w(g_x - p_x) on the grid
   g_i = -1 + 2i / (n - 1), with w(d) = 1 for |d| <= 0.25, then 1 - 1.5 (|d| - 0.25) down to 0.
   In training the mask is the mean over 9 points p + delta {0, +-e_x, +-e_y, (+-1, +-1)}.
5. Aligned tokens A = M * P (and M' * Q); alignment tokens s = sum over (h, w) of A; the
   block's loss is the mean over the pairs of 1 - cos(s_P, s_Q). Blocks' losses are summed.
6. Per frame (`per_frame`): frame 0 from its pair's first side, middle frames the mean of
   their two pairs, the last frame from the last pair's second side. F~ = the aligned tokens with
   u's CLS; I~ = Z's C/2-channel halves -> Conv3d (3, 1, 1) over time -> Linear(C/2 -> D), with
   u's CLS.
7. x <- x + DropPath(W_a F~) + DropPath(W_i I~), W_a and W_i zero-initialised, so the model
   starts as CLIP; then the CLIP block.

Head: the per-frame features (post-LN CLS, projected by CLIP's visual projection when
`proj_dim` > 0), averaged over the frames (`head="mean"`) or through X-CLIP's multi-frame
integration transformer (`head="mit"`: learned frame positions, 1 block, a residual around it,
mean over frames), then LN -> dropout -> Linear (the SSv2 branch's classify head; it also
L2-normalises before the LN, which the LN undoes up to its eps, so that is left out).
The K400 code's text head (frozen CLIP text embeddings of the class names with X-CLIP's
video-specific prompts, logits e^s cos) needs CLIP's text tower and is not built here: both
datasets use the linear head.

Training: `aux["loss"]` = `loss_weight` x the summed alignment loss (weight 1 in the
reference), per clip; `aux["align_loss"]` unweighted. The reference halves delta every epoch
from epoch 30; here delta is the fixed config field `model.ila.jitter` (lower it for a
resumed late phase to follow that schedule). BatchNorm (`nnx.BatchNorm`, PyTorch momentum 0.1)
normalises with the batch's statistics in training, which also update its running averages
(nnx.BatchStat, carried by the train step), and with those averages in evaluation. Under data
parallelism the batch statistics are over the global batch (PyTorch's per-GPU BatchNorm sees 8
clips). `model.remat` recomputes the CLIP blocks, not the ILA modules.

Parameter paths: "clip/..." (the tower, frozen in the configs), "ila/<block>/..." with
"align_skip" (W_a) and "interaction_skip" (W_i), the reference's `temporal_skip_*` fcs that
train at their own lr, "mit/...", "head_norm", "head".
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import clip, layers, vit
from vidtx.models.family import Family
from vidtx.weights import clip as clip_weights

INTERACTIONS = ("separable", "dense")
HEADS = ("mean", "mit")
POINT_RANGE = 0.75  # |coordinate| of an interactive point
# Offsets of the 9 training points around the predicted one, in units of delta.
JITTER = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))
NORM_EPS = 1e-5  # every LayerNorm and BatchNorm, as PyTorch's default

# PyTorch's default Conv / Linear init: uniform with bound 1 / sqrt(fan in).
torch_default = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def constant(value: float, shape, axes):
  """A float32 parameter starting at `value` (biases, zero-initialised layers, norms). No key is
  drawn: each draw costs time proportional to the model so far when it is built abstractly
  (nnx.eval_shape), and ILA has many constant parameters."""
  return nnx.Param(jnp.full(shape, value, jnp.float32), out_sharding=axes, eager_sharding=False)


def axis_weight(d):
  """The mask's profile along one axis: 1 within 0.25 of the point, then down with slope 1.5."""
  return jnp.clip(1.0 - 1.5 * (jnp.abs(d) - 0.25), 0.0, 1.0)


def alignment_mask(points, grid):
  """[..., H, W] masks for points [..., 2] = (x, y) in [-1, 1]: M[y, x] = w(g_y - p_y) *
  w(g_x - p_x), the grid coordinates g_i = -1 + 2i / (n - 1)."""
  h, w = grid
  wy = axis_weight(jnp.linspace(-1.0, 1.0, h) - points[..., 1:2])
  wx = axis_weight(jnp.linspace(-1.0, 1.0, w) - points[..., 0:1])
  return wy[..., :, None] * wx[..., None, :]


def jittered_mask(points, grid, delta: float):
  """The training mask: the mean of the masks of the 9 points p + delta * JITTER."""
  offsets = delta * jnp.asarray(JITTER, jnp.float32)
  return alignment_mask(points[..., None, :] + offsets, grid).mean(axis=-3)


def cosine_loss(a, b):
  """1 - cos(a, b) over the last axis, in float32 (PyTorch's CosineEmbeddingLoss, target 1)."""
  unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  return 1.0 - jnp.sum(unit(a.astype(jnp.float32)) * unit(b.astype(jnp.float32)), axis=-1)


def per_frame(first, second):
  """Per-frame values [B, T, ...] from the two sides of the T - 1 adjacent-frame pairs
  [B, T - 1, ...] (`first`: frame t of pair t, `second`: frame t + 1): frame 0 from pair 0's
  first side, a middle frame the mean of its two pairs, the last from the last pair's second."""
  middle = (first[:, 1:] + second[:, :-1]) / 2
  return jnp.concatenate([first[:, :1], middle, second[:, -1:]], axis=1)


class Conv(nnx.Module):
  """2-D convolution over [N, H, W, C], stride 1, "same" padding; `groups` = C for depthwise.
  Kernel [kh, kw, C / groups, C_out] (PyTorch's [C_out, C / groups, kh, kw], transposed)."""

  def __init__(self, c_in: int, c_out: int, size: int, *, groups: int = 1, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.groups, self.dtype = groups, dtype
    self.kernel = layers.param(rngs, torch_default, (size, size, c_in // groups, c_out),
                               (None, None, None, None))
    self.bias = constant(0.0, (c_out,), (None,))

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    return y + self.bias[...].astype(self.dtype)


class ConvNorm(nnx.Module):
  """Conv -> BatchNorm (float32) [-> 2x2 max-pool, floor] -> ReLU.

  `nnx.BatchNorm` normalises (batch statistics in training, its running averages in
  evaluation); the affine scale and bias are `constant`s of ours, to draw no keys.
  """

  def __init__(self, c_in: int, c_out: int, size: int, *, groups: int = 1, pool: bool = False,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.pool, self.dtype = pool, dtype
    self.conv = Conv(c_in, c_out, size, groups=groups, dtype=dtype, rngs=rngs)
    # PyTorch's momentum 0.1 is flax's 0.9.
    self.norm = nnx.BatchNorm(c_out, momentum=0.9, epsilon=NORM_EPS, dtype=jnp.float32,
                              use_scale=False, use_bias=False, rngs=rngs)
    self.scale = constant(1.0, (c_out,), ("norm",))
    self.bias = constant(0.0, (c_out,), ("norm",))

  def __call__(self, x, train: bool):
    y = self.norm(self.conv(x).astype(jnp.float32), use_running_average=not train)
    y = y * self.scale[...] + self.bias[...]
    if self.pool:
      y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jax.nn.relu(y).astype(self.dtype)


class GroupedDense(nnx.Module):
  """A grouped 1x1 Conv1d: input and output channels cut into `groups` consecutive blocks, block
  g of the output from block g of the input. Kernel [groups, in / groups, out / groups]."""

  def __init__(self, d_in: int, d_out: int, groups: int, *, zero: bool = False, rngs: nnx.Rngs):
    self.groups = groups
    shape = (groups, d_in // groups, d_out // groups)
    self.kernel = constant(0.0, shape, (None,) * 3) if zero else layers.param(
        rngs, torch_default, shape, (None,) * 3)
    self.bias = constant(0.0, (d_out,), (None,))

  def __call__(self, x):
    x = x.astype(jnp.float32).reshape(*x.shape[:-1], self.groups, -1)
    y = jnp.einsum("...gi,gio->...go", x, self.kernel[...])
    return y.reshape(*y.shape[:-2], -1) + self.bias[...]


class PointHead(nnx.Module):
  """Z [N, H, W, C] -> the pair's interactive points [N, 4]: (x, y) in the first frame, then
  (x, y) in the second, each in [-0.75, 0.75]; (0, 0) at init. Channels C -> C/2 -> C/2 (3x3
  convs) -> C/4 -> 4 (grouped 1x1), as 256 -> 128 -> 128 -> 64 -> 4 in the reference."""

  def __init__(self, channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    half = channels // 2
    self.conv1 = ConvNorm(channels, half, 3, pool=True, dtype=dtype, rngs=rngs)
    self.conv2 = ConvNorm(half, half, 3, pool=True, dtype=dtype, rngs=rngs)
    self.fc1 = GroupedDense(half, half // 2, 2, rngs=rngs)
    self.fc2 = GroupedDense(half // 2, 4, 2, zero=True, rngs=rngs)

  def __call__(self, z, train: bool):
    y = self.conv2(self.conv1(z, train), train).max(axis=(1, 2))  # global max-pool
    return POINT_RANGE * jnp.tanh(self.fc2(jax.nn.relu(self.fc1(y))))


class TemporalConv(nnx.Module):
  """Conv3d with kernel (3, 1, 1) and zero padding 1 over the time axis of [B, T, H, W, C].
  Kernel [3, C, C_out] (PyTorch's [C_out, C, 3, 1, 1], transposed)."""

  def __init__(self, c_in: int, c_out: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    init = lambda key, shape, dtype: torch_default(key, (1, 1, 3 * c_in, c_out), dtype).reshape(
        shape)  # fan in 3 C
    self.kernel = layers.param(rngs, init, (3, c_in, c_out), (None, None, None))
    self.bias = constant(0.0, (c_out,), (None,))

  def __call__(self, x):
    t = x.shape[1]
    padded = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    kernel = self.kernel[...].astype(self.dtype)
    y = sum(padded[:, k:k + t] @ kernel[k] for k in range(3))
    return y + self.bias[...].astype(self.dtype)


class ILAModule(nnx.Module):
  """One block's alignment (steps 1-7 of the module docstring): (x, train, key) ->
  (x + the two injections, the block's alignment loss per clip [B]). `channels`: of Z (256)."""

  def __init__(self, width: int, grid: tuple[int, int], *, interaction: str = "separable",
               channels: int = 256, jitter: float = 0.2, drop_path: float = 0.0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if interaction not in INTERACTIONS:
      raise ValueError(f"config.model.ila.interaction={interaction!r}: choose one of "
                       f"{INTERACTIONS}")
    if channels % 8:
      raise ValueError(f"config.model.ila.channels={channels}: use a multiple of 8 (256)")
    self.grid, self.jitter, self.drop_path, self.dtype = tuple(grid), jitter, drop_path, dtype
    self.channels = channels
    self.message_fc = layers.Dense(width, width, ("embed", None), dtype=dtype, rngs=rngs)
    self.message_norm = layers.LayerNorm(width, eps=NORM_EPS, rngs=rngs)
    c = 2 * width
    if interaction == "separable":
      convs = [ConvNorm(c, c, 3, groups=c, dtype=dtype, rngs=rngs),
               ConvNorm(c, channels, 1, dtype=dtype, rngs=rngs),
               ConvNorm(channels, channels, 3, dtype=dtype, rngs=rngs)]
    else:
      convs = [ConvNorm(c, channels, 3, dtype=dtype, rngs=rngs),
               ConvNorm(channels, channels, 3, dtype=dtype, rngs=rngs)]
    self.interaction = nnx.List(convs)
    self.point_head = PointHead(channels, dtype=dtype, rngs=rngs)
    half = channels // 2
    self.interaction_conv = TemporalConv(half, half, dtype=dtype, rngs=rngs)
    self.interaction_fc = layers.Dense(half, width, (None, "embed"), dtype=dtype, rngs=rngs)
    # W_a and W_i: zero, so that the model starts as the image model.
    self.align_skip = layers.Dense(width, width, ("embed", None), kernel_init=layers.zeros,
                                   dtype=dtype, rngs=rngs)
    self.interaction_skip = layers.Dense(width, width, ("embed", None), kernel_init=layers.zeros,
                                         dtype=dtype, rngs=rngs)

  def interact(self, pairs, train: bool):
    """Z [N, H, W, channels] of frame pairs [N, H, W, 2D]."""
    for conv in self.interaction:
      pairs = conv(pairs, train)
    return pairs

  def __call__(self, x, *, frames: int, train: bool, key=None):
    bt, length, d = x.shape
    b, t, (h, w) = bt // frames, frames, self.grid
    u = self.message_norm(self.message_fc(x)).reshape(b, t, length, d)
    cls, patches = u[:, :, :1], u[:, :, 1:].reshape(b, t, h, w, d)
    first, second = patches[:, :-1], patches[:, 1:]  # pair i: frames (i, i + 1)
    z = self.interact(jnp.concatenate([first, second], axis=-1).reshape(-1, h, w, 2 * d), train)
    points = self.point_head(z, train).reshape(b, t - 1, 4)
    if train:
      mask = lambda p: jittered_mask(p, self.grid, self.jitter)
    else:
      mask = lambda p: alignment_mask(p, self.grid)
    aligned_first = mask(points[..., :2])[..., None] * first.astype(jnp.float32)
    aligned_second = mask(points[..., 2:])[..., None] * second.astype(jnp.float32)
    loss = cosine_loss(aligned_first.sum(axis=(2, 3)), aligned_second.sum(axis=(2, 3)))
    aligned = per_frame(aligned_first, aligned_second).astype(x.dtype).reshape(b, t, h * w, d)
    z = z.reshape(b, t - 1, h, w, self.channels)
    half = self.channels // 2
    interaction = self.interaction_fc(self.interaction_conv(
        per_frame(z[..., :half], z[..., half:]))).reshape(b, t, h * w, d)
    with_cls = lambda y: jnp.concatenate([cls, y.astype(cls.dtype)], axis=2).reshape(bt, length, d)
    k_align, k_interaction = jax.random.split(key) if key is not None else (None, None)
    x = x + layers.drop_path(self.align_skip(with_cls(aligned)), self.drop_path, k_align)
    x = x + layers.drop_path(self.interaction_skip(with_cls(interaction)), self.drop_path,
                             k_interaction)
    return x, loss.mean(axis=1)


class MIT(nnx.Module):
  """X-CLIP's multi-frame integration transformer: per-frame features [B, T, D] + learned frame
  positions -> CLIP-style blocks, plus the input (a residual around all) -> mean over frames."""

  def __init__(self, frames: int, dim: int, *, depth: int = 1, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.pos_embed = layers.LearnedPosEmbed(frames, dim, rngs=rngs)
    self.blocks = nnx.List([
        layers.Block(dim, max(1, dim // 64), k_bias=True, quick_gelu=True, norm_eps=NORM_EPS,
                     dtype=dtype, rngs=rngs) for _ in range(depth)])

  def __call__(self, x):
    y = x + self.pos_embed.table().astype(x.dtype)
    for block in self.blocks:
      y = block(y)
    return (y + x).mean(axis=1)


class ILA(nnx.Module):
  """CLIP tower (`clip`, path "clip/..."), one `ILAModule` per block ("ila/<i>/..."), the
  optional MIT ("mit/...") and the head ("head_norm", "head")."""

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int, patch_size: int = 16,
               width: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               proj_dim: int = 512, interaction: str = "separable", channels: int = 256,
               jitter: float = 0.2,
               loss_weight: float = 1.0, head: str = "mean", head_dropout: float = 0.5,
               drop_path: float = 0.0, remat: str = "none", dtype=jnp.float32, rngs: nnx.Rngs):
    if head not in HEADS:
      raise ValueError(f"config.model.ila.head={head!r}: choose one of {HEADS}")
    if num_frames < 2:
      raise ValueError(f"config.data.num_frames={num_frames}: ILA aligns adjacent frames, it "
                       "needs at least 2")
    self.num_frames, self.loss_weight, self.head_dropout = num_frames, loss_weight, head_dropout
    self.clip = clip.CLIPVision(image_size=image_size, patch_size=patch_size, width=width,
                                depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                proj_dim=proj_dim, drop_path=drop_path, remat=remat, dtype=dtype,
                                rngs=rngs)
    self.ila = nnx.List([
        ILAModule(width, self.clip.grid, interaction=interaction, channels=channels,
                  jitter=jitter, drop_path=rate, dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)])
    dim = self.clip.feature_dim
    self.mit = MIT(num_frames, dim, dtype=dtype, rngs=rngs) if head == "mit" else None
    self.head_norm = layers.LayerNorm(dim, eps=NORM_EPS, rngs=rngs)
    self.head = layers.Dense(dim, num_classes, ("embed", "classes"),
                             kernel_init=layers.trunc_normal, rngs=rngs)

  def frame_features(self, video, *, train: bool = False, key=None):
    """(per-frame features [B, T, feature_dim], summed alignment loss [B])."""
    b, t = video.shape[:2]
    if t != self.num_frames:
      raise ValueError(f"ILA was built for {self.num_frames} frames, got a clip of {t}: set "
                       "config.data.num_frames")
    x = self.clip.embed(video)
    loss = jnp.zeros((b,), jnp.float32)
    for block, module, block_key in zip(self.clip.blocks, self.ila,
                                        layers.block_keys(key, len(self.ila))):
      k_ila, k_block = jax.random.split(block_key) if block_key is not None else (None, None)
      x, block_loss = module(x, frames=t, train=train, key=k_ila)
      loss = loss + block_loss
      x = block(x, k_block)
    return self.clip.features(x).reshape(b, t, -1), loss

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {"loss": weighted alignment loss [B], "align_loss"}) for
    video [B, T, H, W, 3]; `key` drives drop path and dropout, used only when `train`."""
    if keep is not None:
      raise ValueError("ILA sees every token: set config.model.masking='none'")
    key = key if train else None
    features_key, dropout_key = jax.random.split(key) if key is not None else (None, None)
    features, loss = self.frame_features(video, train=train, key=features_key)
    pooled = features.mean(axis=1) if self.mit is None else self.mit(features)
    pooled = layers.dropout(self.head_norm(pooled), self.head_dropout, dropout_key)
    logits = self.head(pooled).astype(jnp.float32)
    return logits, {"loss": self.loss_weight * loss, "align_loss": loss}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> ILA:
  s = model_config.ila
  width, depth, heads = vit.size(model_config)
  _, patch, _ = model_config.patch_size  # (1, p, p), checked by _check
  return ILA(
      num_classes=data_config.num_classes, num_frames=data_config.num_frames,
      image_size=data_config.crop_size, patch_size=patch, width=width, depth=depth,
      num_heads=heads, mlp_ratio=model_config.mlp_ratio, proj_dim=s.proj_dim,
      interaction=s.interaction, channels=s.channels, jitter=s.jitter,
      loss_weight=s.loss_weight, head=s.head,
      head_dropout=model_config.head_dropout, drop_path=model_config.drop_path,
      remat=model_config.remat, dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # A CLIP ViT per frame (model.patch_size (1, p, p), attention "space_only") with an ILA
  # module before each block. CLIP's blocks always have q, k and v biases.
  s = ml_collections.ConfigDict()
  s.proj_dim = 0  # CLIP's visual projection of the CLS feature: B 512, L 768; 0: none
  # Interaction convs: "separable" (the K400 code: depthwise 3x3, 1x1 to 256, 3x3) or "dense"
  # (the SSv2 branch: two 3x3 convs); each + BatchNorm + ReLU.
  s.interaction = "separable"
  s.channels = 256  # of the interaction features (the paper's 256; small for CPU tests)
  # delta: spread of the 9 jittered interactive points at train time. The reference halves it
  # every epoch from epoch 30; here it is fixed (lower it for a late phase).
  s.jitter = 0.2
  s.loss_weight = 1.0  # weight of the summed per-block cosine alignment losses
  # Temporal pooling of the per-frame features before the LN-dropout-Linear head: "mean" or
  # "mit" (X-CLIP's 1-block multi-frame integration transformer, then the mean).
  s.head = "mean"
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  m, d, s = config.model, config.data, config.model.ila
  vit.check_frame_patches(config, "CLIP", "(1, 16, 16) for B/16")
  vit.check_heads(config)
  if d.crop_size // m.patch_size[1] < 4:
    errors.fail("data.crop_size", d.crop_size, "ILA's point head max-pools the patch grid "
                f"twice: give at least 4 x {m.patch_size[1]} pixels")
  if d.num_frames < 2:
    errors.fail("data.num_frames", d.num_frames, "ILA aligns adjacent frames: use at least 2")
  if s.interaction not in INTERACTIONS:
    errors.fail("model.ila.interaction", s.interaction, f"choose one of {INTERACTIONS}")
  if s.channels < 8 or s.channels % 8:
    errors.fail("model.ila.channels", s.channels, "use a positive multiple of 8 (the paper: 256)")
  if s.head not in HEADS:
    errors.fail("model.ila.head", s.head, f"choose one of {HEADS}")
  for field in ("proj_dim", "jitter", "loss_weight"):
    if s[field] < 0:
      errors.fail(f"model.ila.{field}", s[field], "must be >= 0")


FAMILY = Family(
    name="ila",
    build=build,
    sizes=vit.SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "attention",
           "remat", "drop_path", "head_dropout", "dtype"),
    section=section,
    check=_check,
    # CLIP encodes each frame apart; the ILA modules connect them.
    attentions=("space_only",),
    tubelets=True,
    # Its CLIP tower from a CLIP checkpoint; init_from keeps the ILA modules fresh.
    converters=(clip_weights.TOWER.into("clip"),),
)
