"""S3D and S3D-G of "Rethinking Spatiotemporal Feature Learning" (Xie et al., 2018): Inception-v1
with every 3-D convolution separated into a 1xkxk spatial and a kx1x1 temporal conv, as
torchvision builds S3D (`torchvision.models.video.s3d`); with `model.s3d.gating`, S3D-G's
feature gating.

video [B, T, H, W, 3] ->
  conv1: separable 7x7x7 conv to 64 (stride 2 in T, H, W) -> max pool 1x3x3 / (1, 2, 2)
  -> conv2b: 1x1x1 conv 64 -> 64 -> conv2c: separable 3x3x3 conv to 192 [-> gate]
  -> max pool 1x3x3 / (1, 2, 2) -> mixed 3b, 3c -> max pool 3x3x3 / 2 (padding 1)
  -> mixed 4b-4f -> max pool 2x2x2 / 2 -> mixed 5b, 5c (1024 channels)
  -> average pool 2x7x7 (stride 1) -> dropout (model.head_dropout) -> 1x1x1 conv to the classes
  -> mean over the pooled positions.
Every conv is followed by BatchNorm and ReLU. A mixed (Inception) block concatenates four
branches: a 1x1x1 conv; a 1x1x1 conv then a separable 3x3x3 conv (twice, at its own widths);
and a 3x3x3 max pool (stride 1) then a 1x1x1 conv.

The head's pooling window is 2x7x7 at 16+ frames of 224 (where it covers the whole map, as at
torchvision's 16x224); on smaller clips it shrinks to the feature map (a global average).
BatchNorm is torchvision S3D's: eps 1e-3 and PyTorch momentum 0.001 (TF's decay 0.999; short
runs raise it with `model.bn.momentum` so that the running averages catch up).

S3D-G (`gating=True`), as antoine77340/S3D_HowTo100M's s3dg.py and TF-slim's s3dg.py place
it: self-gating (the channels' average over T, H, W -> Linear -> sigmoid -> scales the channels)
on the output of every branch of every mixed block, and after conv2c.

Parameter paths (vidtx.weights.torchvision_video maps them): "conv1/{spatial, temporal}/
{conv, norm}", "conv2b/{conv, norm}", "conv2c/...", "gate2c/fc", "blocks/<i>/branch0/...",
"blocks/<i>/branch{1, 2}/0/..." (the 1x1x1 conv) and ".../1/{spatial, temporal}/...",
"blocks/<i>/branch3/...", "blocks/<i>/gates/<b>/fc", "classifier/{kernel, bias}".
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family
from vidtx.weights import torchvision_video

# A mixed block's widths: (branch 0, branch 1's 1x1x1, branch 1, branch 2's 1x1x1, branch 2,
# branch 3).
S3D_STAGES = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),  # mixed 3b, 3c
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),  # mixed 4b-4f
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),  # mixed 5b, 5c
)


def _quarter(c: int) -> int:
  """A quarter of a width, rounded up to a multiple of 8 (so it splits over 8 devices)."""
  return 8 * math.ceil(c / 32)


# config.model.size -> (conv1, conv2b, conv2c widths; the mixed blocks of stages 3, 4, 5).
SIZES = {
    "s3d": ((64, 64, 192), S3D_STAGES),
    # The same layers at a quarter of the widths: S3D at CPU scale.
    "small": (tuple(map(_quarter, (64, 64, 192))),
              tuple(tuple(tuple(map(_quarter, b)) for b in stage) for stage in S3D_STAGES)),
    # One mixed block per stage: for tests.
    "tiny": ((8, 8, 16), (((8, 8, 8, 8, 8, 8),), ((8, 8, 16, 8, 8, 8),),
                          ((8, 8, 16, 8, 8, 16),))),
}
# The head's average pool (T, H, W), shrunk to smaller feature maps.
POOL = (2, 7, 7)
# BatchNorm's epsilon and momentum in torchvision's S3D (config.model.bn overrides them).
EPS, NORM_MOMENTUM = 1e-3, 0.001


def feature_grid(frames: int, side: int) -> tuple[int, int, int]:
  """(T, H, W) of the map the mixed 5 blocks see, for clips of `frames` x `side` x `side`."""
  def out(n, k, s, p):
    return (n + 2 * p - k) // s + 1
  t = out(out(out(frames, 7, 2, 3), 3, 2, 1), 2, 2, 0)
  h = side
  for k, s, p in ((7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1), (2, 2, 0)):
    h = out(h, k, s, p)
  return t, h, h


class SeparableConv(nnx.Module):
  """torchvision's TemporalSeparableConv: a 1xkxk conv (stride (1, s, s)), BatchNorm, ReLU, then
  a kx1x1 conv (stride (s, 1, 1)), BatchNorm, ReLU; padding p in the kernel's axes."""

  def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, *,
               axes=layers.CONV_AXES, momentum: float, dtype, rngs):
    self.spatial = layers.ConvBatchNorm(c_in, c_out, (1, k, k), stride=(1, stride, stride),
                                        padding=(0, padding, padding), axes=axes,
                                        momentum=momentum, eps=EPS, dtype=dtype, rngs=rngs)
    self.temporal = layers.ConvBatchNorm(c_out, c_out, (k, 1, 1), stride=(stride, 1, 1),
                                         padding=(padding, 0, 0), momentum=momentum, eps=EPS,
                                         dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.temporal(self.spatial(x, train), train)


class Gate(nnx.Module):
  """S3D-G's self-gating: x * sigmoid(fc(x averaged over T, H, W)), per channel."""

  def __init__(self, dim: int, *, dtype, rngs):
    self.fc = layers.Dense(dim, dim, layers.CONV_AXES, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    weights = jax.nn.sigmoid(self.fc(x.astype(jnp.float32).mean(axis=(1, 2, 3))))
    return x * weights[:, None, None, None, :].astype(x.dtype)


class Mixed(nnx.Module):
  """A separable Inception block (torchvision's SepInceptionBlock3D), with S3D-G's gates on its
  four branches when `gating`."""

  def __init__(self, c_in: int, widths, *, gating: bool, momentum: float, dtype, rngs):
    b0, b1_mid, b1, b2_mid, b2, b3 = widths
    unit = lambda c_out: layers.ConvBatchNorm(c_in, c_out, 1, momentum=momentum, eps=EPS,
                                              dtype=dtype, rngs=rngs)
    separable = lambda mid, c_out: SeparableConv(mid, c_out, 3, 1, 1, momentum=momentum,
                                                 dtype=dtype, rngs=rngs)
    self.branch0 = unit(b0)
    self.branch1 = nnx.List([unit(b1_mid), separable(b1_mid, b1)])
    self.branch2 = nnx.List([unit(b2_mid), separable(b2_mid, b2)])
    self.branch3 = unit(b3)
    self.gates = nnx.List([Gate(c, dtype=dtype, rngs=rngs) for c in (b0, b1, b2, b3)]
                          ) if gating else None

  def __call__(self, x, train: bool):
    branches = [
        self.branch0(x, train),
        self.branch1[1](self.branch1[0](x, train), train),
        self.branch2[1](self.branch2[0](x, train), train),
        self.branch3(layers.max_pool3d(x, (3, 3, 3), (1, 1, 1), (1, 1, 1)), train),
    ]
    if self.gates is not None:
      branches = [gate(y) for gate, y in zip(self.gates, branches)]
    return jnp.concatenate(branches, axis=-1)


def width(widths) -> int:
  """The channels a mixed block puts out."""
  return widths[0] + widths[2] + widths[4] + widths[5]


class S3D(nnx.Module):
  """S3D / S3D-G (see the module docstring). `stages`: the mixed blocks' widths of stages 3, 4
  and 5; `stem`: the widths of conv1, conv2b, conv2c."""

  def __init__(self, *, num_classes: int, stem, stages, gating: bool = False,
               head_dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    if len(stages) != 3:
      raise ValueError(f"S3D has three stages of mixed blocks (3, 4, 5), got {len(stages)}")
    self.head_dropout = head_dropout
    c1, c2b, c2c = stem
    m = NORM_MOMENTUM
    # conv1 reads 3 RGB channels, which split over no mesh axis.
    self.conv1 = SeparableConv(3, c1, 7, 2, 3, axes=(None, "conv_out"), momentum=m, dtype=dtype,
                               rngs=rngs)
    self.conv2b = layers.ConvBatchNorm(c1, c2b, 1, momentum=m, eps=EPS, dtype=dtype, rngs=rngs)
    self.conv2c = SeparableConv(c2b, c2c, 3, 1, 1, momentum=m, dtype=dtype, rngs=rngs)
    self.gate2c = Gate(c2c, dtype=dtype, rngs=rngs) if gating else None
    blocks, c_in = [], c2c
    for stage in stages:
      for widths in stage:
        blocks.append(Mixed(c_in, widths, gating=gating, momentum=m, dtype=dtype, rngs=rngs))
        c_in = width(widths)
    self.blocks = nnx.List(blocks)
    # Max pools follow the last block of stages 3 and 4.
    self.pool_after = (len(stages[0]) - 1, len(stages[0]) + len(stages[1]) - 1)
    # Initialised as a Linear (Xavier), not as a conv followed by BatchNorm (He, fan out): the
    # latter's logits start about sqrt(channels / 2) times too large.
    self.classifier = layers.Conv3d(c_in, num_classes, 1, use_bias=True,
                                    axes=("embed", "classes"), kernel_init=layers.xavier,
                                    dtype=dtype, rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("s3d sees every pixel: set config.model.masking='none'")
    x = self.conv1(video, train)
    x = layers.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = self.conv2c(self.conv2b(x, train), train)
    if self.gate2c is not None:
      x = self.gate2c(x)
    x = layers.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for i, block in enumerate(self.blocks):
      x = block(x, train)
      if i == self.pool_after[0]:
        x = layers.max_pool3d(x, (3, 3, 3), (2, 2, 2), (1, 1, 1))
      elif i == self.pool_after[1]:
        x = layers.max_pool3d(x, (2, 2, 2), (2, 2, 2), (0, 0, 0))
    return self.head(x, train, key), {}

  def head(self, x, train: bool = False, key=None):
    """Logits [B, classes] float32 of the last features [B, T, H, W, C]: average pool (`POOL`,
    stride 1, shrunk to smaller maps), dropout, the 1x1x1 classifier, mean over the windows."""
    x = x.astype(jnp.float32)
    window = tuple(min(p, n) for p, n in zip(POOL, x.shape[1:4]))
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, *window, 1), (1,) * 5, "VALID")
    x = layers.dropout(x / math.prod(window), self.head_dropout, key if train else None)
    return self.classifier(x).astype(jnp.float32).mean(axis=(1, 2, 3))


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> S3D:
  stem, stages = SIZES[model_config.size]
  return S3D(num_classes=data_config.num_classes, stem=stem, stages=stages,
             gating=model_config.s3d.gating, head_dropout=model_config.head_dropout,
             dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  # S3D-G: self-gating on every mixed block's branches and after conv2c. False: torchvision's S3D.
  s.gating = False
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  if not isinstance(config.model.s3d.gating, bool):
    errors.fail("model.s3d.gating", config.model.s3d.gating, "give True (S3D-G) or False (S3D)")
  d = config.data
  t, h, _ = feature_grid(d.num_frames, d.crop_size)
  if t < 1:
    errors.fail("data.num_frames", d.num_frames, "S3D strides 8 in time: give at least 5 frames")
  if h < 1:
    errors.fail("data.crop_size", d.crop_size, "S3D strides 32 in space: give at least 17")


FAMILY = Family(
    name="s3d",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
    converters=(torchvision_video.S3D,),
)
