"""X3D of "X3D: Expanding Architectures for Efficient Video Recognition" (Feichtenhofer, 2020):
X3D-XS, S, M and L as pytorchvideo builds them (`pytorchvideo.models.x3d.create_x3d`, called by
its hub's x3d_xs, x3d_s, x3d_m, x3d_l), whose Kinetics weights convert (vidtx.weights.x3d), as
do PySlowFast's.

video [B, T, H, W, 3] ->
  stem: 1x3x3 conv to 24 channels (stride 1, 2, 2), depth-wise 5x1x1 conv, BatchNorm, ReLU
  -> four stages of bottleneck blocks at 24, 48, 96, 192 channels (inner width int(2.25 C): 54,
  108, 216, 432), the first block of each striding 2 in space (never in time)
  -> head: 1x1x1 conv to the last inner width (432), BatchNorm, ReLU, average pool over (T, H, W)
  windows (below), 1x1x1 conv to 2048 (model.x3d.head_width; no bias), ReLU, dropout
  (model.head_dropout), Linear -> logits, averaged over the window positions.
A bottleneck block: 1x1x1 conv to the inner width, BatchNorm, ReLU; depth-wise 3x3x3 conv
(padding 1; stride 1, 2, 2 in a stage's first block), BatchNorm; squeeze-excitation on blocks
0, 2, 4, ... of a stage (SE: the channels' average over T, H, W -> 1x1x1 conv with bias to a
16th of them, `round_width`ed -> ReLU -> 1x1x1 conv with bias back -> sigmoid -> scales the
channels);
Swish; 1x1x1 conv to the block's width, BatchNorm. Its shortcut is a strided 1x1x1 conv where
the shape changes, followed by BatchNorm where the width changes (so the first block of the
first stage, 24 -> 24 channels at stride 2, has a conv and no BatchNorm, as in pytorchvideo;
PySlowFast's X3D has one there too: `model.x3d.shortcut_norm`); the sum passes a ReLU.

The sizes differ in depth only: blocks per stage ceil(f x (1, 2, 5, 3)), f = 2.2 for XS, S and
M (3, 5, 11, 7), 5.0 for L (5, 10, 25, 15); XS, S and M are one network that the recipes
(configs/x3d_k400.py) feed clips of 4x160, 13x160 and 16x224, L clips of 16x312.
`model.x3d` overrides the widths and blocks for smaller models.

The head pools as pytorchvideo's does: windows of the final map's size at the training clip
(config.data: num_frames by ceil(crop_size / 32) squared, pytorchvideo's head_pool_kernel_size
for input_clip_length and input_crop_size) at stride 1; the 1x1x1 conv, ReLU, dropout and Linear
then run at each window position and the positions' logits are averaged. At the training clip
(or a smaller one) that is one global average; at a larger test crop (data.eval_crop_size:
X3D's 182, 256, 356) the ReLU after the pool makes it differ from a global average.
(PySlowFast averages the windows' softmax instead.) pytorchvideo's head ends in a softmax at
evaluation: this model returns the logits before it.

BatchNorm is PyTorch's (momentum 0.1, eps 1e-5). Initialisation is PySlowFast's: convolutions
He-normal over fan-out (depth-wise ones too, fan-out 27 per channel), the classifier normal with
std 0.01, biases zero, and with `model.x3d.zero_init_residual` each block's last BatchNorm scale
zero (RESNET.ZERO_INIT_FINAL_BN), so every block starts as its shortcut.

Depth-wise convolutions run through `layers.depthwise_conv3d` (shifted sums on XLA:CPU).
Parameter paths mirror pytorchvideo's: "stem/{spatial, temporal}/kernel", "stem/norm",
"stages/<i>/<j>/{conv_a, norm_a, conv_b, norm_b, se/{reduce, expand}, conv_c, norm_c,
shortcut, shortcut_norm}", "head/{pre_conv, pre_norm, post_conv, proj}".
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family, check_stages
from vidtx.weights import x3d as x3d_weights

WIDTHS = (24, 48, 96, 192)
BASE_BLOCKS = (1, 2, 5, 3)
BOTTLENECK_FACTOR = 2.25
SE_RATIO = 1 / 16
HEAD_WIDTH = 2048
# The depth factors of the sizes (pytorchvideo's depth_factor).
DEPTH_FACTORS = {"xs": 2.2, "s": 2.2, "m": 2.2, "l": 5.0}
# model.x3d.shortcut_norm: where a BatchNorm follows a shortcut conv (see `section`).
SHORTCUT_NORMS = ("width", "always")
# config.model.size -> blocks per stage.
SIZES = {name: tuple(math.ceil(f * n) for n in BASE_BLOCKS) for name, f in DEPTH_FACTORS.items()}


def round_width(width: float, divisor: int = 8) -> int:
  """`width` rounded to a multiple of `divisor` (at least `divisor`), rounded up once more if
  that lost over 10%: the SE width rule of pytorchvideo and PySlowFast (54 x 1/16 -> 8, 216 x
  1/16 -> 16, 432 x 1/16 -> 32)."""
  out = max(divisor, int(width + divisor / 2) // divisor * divisor)
  return out + divisor if out < 0.9 * width else out


def inner_width(width: int) -> int:
  return int(BOTTLENECK_FACTOR * width)


def size(model_config: ml_collections.ConfigDict):
  """(stage widths, blocks per stage, head width): the size's unless model.x3d overrides them."""
  s = model_config.x3d
  return (tuple(s.stage_widths) or WIDTHS, tuple(s.stage_blocks) or SIZES[model_config.size],
          s.head_width)


# The inner widths (54, 108, ...) and SE widths rarely divide a mesh axis: they split over none,
# and the kernels around them shard on their other channel axis only.
_INTO_INNER, _FROM_INNER, _NONE = ("conv_in", None), (None, "conv_out"), (None, None)


class DepthwiseConv(nnx.Module):
  """PyTorch's Conv3d with groups = channels, no bias, padding kernel // 2: kernel [kT, kH, kW, 1,
  C] (PyTorch's [C, 1, kT, kH, kW] transposed), computed by `layers.depthwise_conv3d`."""

  def __init__(self, channels: int, kernel, *, stride=1, dtype, rngs):
    kernel = layers.triple(kernel, "kernel")
    self.stride, self.padding = layers.triple(stride, "stride"), tuple(k // 2 for k in kernel)
    self.dtype = dtype
    self.kernel = layers.param(rngs, layers.he_normal_fan_out, (*kernel, 1, channels),
                               (None,) * 5)

  def __call__(self, x):
    return layers.depthwise_conv3d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                                   self.stride, self.padding)


class SqueezeExcitation(nnx.Module):
  """x * sigmoid(expand(relu(reduce(x averaged over T, H, W)))), per channel; reduce and expand
  are 1x1x1 convs with biases (fvcore's SqueezeExcitation)."""

  def __init__(self, channels: int, reduced: int, *, dtype, rngs):
    self.reduce = layers.Conv3d(channels, reduced, 1, use_bias=True, axes=_NONE, dtype=dtype,
                                rngs=rngs)
    self.expand = layers.Conv3d(reduced, channels, 1, use_bias=True, axes=_NONE, dtype=dtype,
                                rngs=rngs)

  def __call__(self, x):
    pooled = x.astype(jnp.float32).mean(axis=(1, 2, 3), keepdims=True)
    weights = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(pooled))).astype(jnp.float32))
    return x * weights.astype(x.dtype)


class Bottleneck(nnx.Module):
  """One residual block (see the module docstring): `stride` in space on its depth-wise conv and
  shortcut, SE where `se`; BatchNorm after the shortcut conv where the width changes, or after
  every shortcut conv with `shortcut_norm="always"`."""

  def __init__(self, c_in: int, c_out: int, *, stride: int, se: bool, zero_init: bool,
               shortcut_norm: str = "width", dtype, rngs):
    inner = inner_width(c_out)
    self.conv_a = layers.Conv3d(c_in, inner, 1, axes=_INTO_INNER, dtype=dtype, rngs=rngs)
    self.norm_a = layers.BatchNorm(inner, rngs=rngs)
    self.conv_b = DepthwiseConv(inner, 3, stride=(1, stride, stride), dtype=dtype, rngs=rngs)
    self.norm_b = layers.BatchNorm(inner, rngs=rngs)
    self.se = SqueezeExcitation(inner, round_width(inner * SE_RATIO), dtype=dtype,
                                rngs=rngs) if se else None
    self.conv_c = layers.Conv3d(inner, c_out, 1, axes=_FROM_INNER, dtype=dtype, rngs=rngs)
    self.norm_c = layers.BatchNorm(c_out, rngs=rngs)
    if zero_init:  # the block starts as its shortcut
      self.norm_c.scale = layers.param(rngs, layers.zeros, (c_out,), ("norm",))
    self.shortcut = layers.Conv3d(c_in, c_out, 1, stride=(1, stride, stride), dtype=dtype,
                                  rngs=rngs) if stride != 1 or c_in != c_out else None
    self.shortcut_norm = layers.BatchNorm(c_out, rngs=rngs) if c_in != c_out or (
        shortcut_norm == "always" and self.shortcut is not None) else None

  def __call__(self, x, train: bool):
    y = jax.nn.relu(self.norm_a(self.conv_a(x), train))
    y = self.norm_b(self.conv_b(y), train)
    if self.se is not None:
      y = self.se(y)
    y = self.norm_c(self.conv_c(jax.nn.silu(y)), train)
    shortcut = x
    if self.shortcut is not None:
      shortcut = self.shortcut(x)
    if self.shortcut_norm is not None:
      shortcut = self.shortcut_norm(shortcut, train)
    return jax.nn.relu(shortcut + y)


class Stem(nnx.Module):
  """1x3x3 conv (stride 1, 2, 2) to `width`, depth-wise 5x1x1 conv, BatchNorm, ReLU."""

  def __init__(self, width: int, *, dtype, rngs):
    # It reads 3 RGB channels, which split over no mesh axis.
    self.spatial = layers.Conv3d(3, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1),
                                 axes=(None, "conv_out"), dtype=dtype, rngs=rngs)
    self.temporal = DepthwiseConv(width, (5, 1, 1), dtype=dtype, rngs=rngs)
    self.norm = layers.BatchNorm(width, rngs=rngs)

  def __call__(self, x, train: bool):
    return jax.nn.relu(self.norm(self.temporal(self.spatial(x)), train))


class Head(nnx.Module):
  """1x1x1 conv to `inner`, BatchNorm, ReLU, average over (T, H, W) `window`s at stride 1
  (None: the whole map; see `layers.window_average`), 1x1x1 conv to `width` (no bias), ReLU,
  dropout, Linear to the classes, the window positions' logits averaged."""

  def __init__(self, c_in: int, inner: int, width: int, num_classes: int, *, dropout: float,
               window=None, dtype, rngs):
    self.dropout = dropout
    self.window = None if window is None else tuple(window)
    self.pre_conv = layers.Conv3d(c_in, inner, 1, axes=_INTO_INNER, dtype=dtype, rngs=rngs)
    self.pre_norm = layers.BatchNorm(inner, rngs=rngs)
    self.post_conv = layers.Conv3d(inner, width, 1, axes=_FROM_INNER, dtype=dtype, rngs=rngs)
    self.proj = layers.Dense(width, num_classes, ("embed", "classes"),
                             kernel_init=nnx.initializers.normal(0.01), dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool, key=None):
    x = jax.nn.relu(self.pre_norm(self.pre_conv(x), train))
    x = layers.window_average(x.astype(jnp.float32), self.window)
    # Each window position through the conv and ReLU; then, dropout and Linear being linear
    # (dropout is the identity at evaluation), projecting the positions' mean gives the mean
    # of their logits.
    x = jax.nn.relu(self.post_conv(x)).mean(axis=(1, 2, 3))
    x = layers.dropout(x, self.dropout, key if train else None)
    return self.proj(x).astype(jnp.float32)


class X3D(nnx.Module):
  """Stem, stages of bottleneck blocks, head (see the module docstring). `widths` and `blocks`:
  each stage's; the stem has the first stage's width. `head_window`: the (T, H, W) window the
  head pools (the final map at the training clip); None: the whole map at any clip size."""

  def __init__(self, *, num_classes: int, widths=WIDTHS, blocks=SIZES["s"],
               head_width: int = HEAD_WIDTH, head_dropout: float = 0.0,
               zero_init_residual: bool = True, shortcut_norm: str = "width",
               head_window=None, dtype=jnp.float32, rngs: nnx.Rngs):
    if len(widths) != len(blocks):
      raise ValueError(f"widths {widths} and blocks per stage {blocks} must have one entry per "
                       "stage")
    self.stem = Stem(widths[0], dtype=dtype, rngs=rngs)
    stages, c_in = [], widths[0]
    for width, depth in zip(widths, blocks):
      stages.append(nnx.List([
          Bottleneck(c_in if j == 0 else width, width, stride=2 if j == 0 else 1,
                     se=j % 2 == 0, zero_init=zero_init_residual, shortcut_norm=shortcut_norm,
                     dtype=dtype, rngs=rngs)
          for j in range(depth)]))
      c_in = width
    self.stages = nnx.List(stages)
    self.head = Head(c_in, inner_width(c_in), head_width, num_classes, dropout=head_dropout,
                     window=head_window, dtype=dtype, rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("x3d sees every pixel: set config.model.masking='none'")
    x = self.stem(video, train)
    for stage in self.stages:
      for block in stage:
        x = block(x, train)
    return self.head(x, train, key), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> X3D:
  widths, blocks, head_width = size(model_config)
  # The head's window: the final map of the training clip (the stem and each stage stride 2 in
  # space, nothing in time).
  window = layers.head_window(data_config.num_frames, data_config.crop_size,
                              2 ** (len(widths) + 1))
  return X3D(num_classes=data_config.num_classes, widths=widths, blocks=blocks,
             head_width=head_width, head_dropout=model_config.head_dropout,
             head_window=window,
             zero_init_residual=model_config.x3d.zero_init_residual,
             shortcut_norm=model_config.x3d.shortcut_norm,
             dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # The size (model.size: xs, s, m, l) gives the blocks per stage; these fields override the
  # stages and the head for a narrower or shallower model (the tests', the :cpu recipe's).
  s = ml_collections.ConfigDict()
  s.stage_widths = ()  # channels of each stage, e.g. (8, 16, 32, 64); (): 24, 48, 96, 192
  s.stage_blocks = ()  # bottleneck blocks per stage, e.g. (1, 1, 1, 1); (): the size's
  s.head_width = HEAD_WIDTH  # channels of the head's 1x1x1 conv after the pool (2048)
  # Each block's last BatchNorm scale starts at zero (PySlowFast's RESNET.ZERO_INIT_FINAL_BN,
  # which its X3D recipes set); False: at one.
  s.zero_init_residual = True
  # BatchNorm after a block's shortcut conv: "width" where the width changes (pytorchvideo's
  # X3D, whose weights convert); "always" after every one (PySlowFast's, whose .pyth files
  # convert), which adds one to the first block (24 -> 24 channels at stride 2).
  s.shortcut_norm = "width"
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  s = config.model.x3d
  check_stages(config, "x3d", len(WIDTHS), lambda: size(config.model)[:2])
  if not (isinstance(s.head_width, int) and s.head_width >= 1):
    errors.fail("model.x3d.head_width", s.head_width, "give a positive int (X3D: 2048)")
  if not isinstance(s.zero_init_residual, bool):
    errors.fail("model.x3d.zero_init_residual", s.zero_init_residual, "give True or False")
  if s.shortcut_norm not in SHORTCUT_NORMS:
    errors.fail("model.x3d.shortcut_norm", s.shortcut_norm, f"choose one of {SHORTCUT_NORMS} "
                "(pytorchvideo's X3D: 'width', PySlowFast's: 'always')")


FAMILY = Family(
    name="x3d",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
    converters=(x3d_weights.PYTORCHVIDEO, x3d_weights.PYSLOWFAST),
)
