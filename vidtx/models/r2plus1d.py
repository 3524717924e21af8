"""Video ResNets of "A Closer Look at Spatiotemporal Convolutions" (Tran et al., 2018), as
torchvision builds them (`torchvision.models.video.resnet`): R(2+1)D-18, R3D-18 and MC3-18, and
R(2+1)D-34 (MMAction2's depths 3, 4, 6, 3 on the same blocks).

video [B, T, H, W, 3] -> stem -> four stages of basic residual blocks at 64, 128, 256, 512
channels (the first block of stages 2-4 strides 2) -> global average pool over (T, H, W) ->
dropout (model.head_dropout) -> Linear.

Each stage's 3x3x3 convolutions are one kind (`KINDS`), the size's choice per stage:
- "3d": a 3x3x3 conv; it strides 2 in time and space (R3D, and MC3's first stage);
- "2d": a 1x3x3 conv, no temporal kernel; it strides in space only (MC3's stages 2-4);
- "2plus1d": a 1x3x3 conv to M channels, BatchNorm, ReLU, then a 3x1x1 conv (the (2+1)D
  factorisation, `SplitConv`); the spatial conv strides in space, the temporal one in time.
  M = floor(27 N_in N_out / (9 N_in + 3 N_out)) keeps the parameters of the 3x3x3 conv; as in
  torchvision, both convs of a block use the M of the block's (N_in, N_out).
The stem is a 3x7x7 conv to 64 channels (stride 1, 2, 2), or for R(2+1)D a 1x7x7 conv to 45
channels, BatchNorm, ReLU, and a 3x1x1 conv to 64 (`model.r2plus1d.stem_stride` sets the
spatial stride: 4 for the :cpu variant's small clips). A block's shortcut is a strided 1x1x1 conv
and BatchNorm where the shape changes (its temporal stride is the block kind's). BatchNorm is
PyTorch's (momentum 0.1, eps 1e-5), its running averages `nnx.BatchStat`s.

R(2+1)D-34 here is torchvision's structure at ResNet-34 depths; MMAction2's checkpoints
compute M per conv and use BatchNorm eps 1e-3, so they do not convert into it.

Parameter paths mirror torchvision's (vidtx.weights.torchvision_video): "stem/conv",
"stem/norm" (R(2+1)D: "stem/spatial/{conv, norm}", "stem/temporal/{conv, norm}"),
"layers/<i>/<j>/{conv1, norm1, conv2, norm2}" (a (2+1)D conv: "conv1/{spatial, norm,
temporal}"), "layers/<i>/<j>/downsample/{conv, norm}", "fc/{kernel, bias}".
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family, check_stages
from vidtx.weights import torchvision_video

KINDS = ("3d", "2d", "2plus1d")
WIDTHS = (64, 128, 256, 512)
# config.model.size -> (conv kind of each stage, blocks per stage, stem kind).
SIZES = {
    "r2plus1d_18": (("2plus1d",) * 4, (2, 2, 2, 2), "2plus1d"),
    "r2plus1d_34": (("2plus1d",) * 4, (3, 4, 6, 3), "2plus1d"),
    "r3d_18": (("3d",) * 4, (2, 2, 2, 2), "3d"),
    "mc3_18": (("3d", "2d", "2d", "2d"), (2, 2, 2, 2), "3d"),
}


def size(model_config: ml_collections.ConfigDict):
  """(kinds, widths, blocks, stem kind): the size's, widths and blocks unless the section
  overrides them; a model of fewer stages keeps the first kinds."""
  kinds, blocks, stem = SIZES[model_config.size]
  s = model_config.r2plus1d
  widths = tuple(s.stage_widths) or WIDTHS
  blocks = tuple(s.stage_blocks) or blocks
  return kinds[:len(widths)], widths, blocks, stem


def mid_channels(c_in: int, c_out: int) -> int:
  """M of a (2+1)D conv standing for a 3x3x3 conv c_in -> c_out: the same parameters."""
  return (27 * c_in * c_out) // (9 * c_in + 3 * c_out)


# The mid channels of a (2+1)D conv (45, 230, ...) rarely divide a mesh axis: they split over
# none, and the kernels around them shard on their other channel axis only.
_INTO_MID, _FROM_MID = ("conv_in", None), (None, "conv_out")


class SplitConv(nnx.Module):
  """The (2+1)D conv: 1xkxk `spatial` conv to `mid` channels (stride (1, s, s)), BatchNorm,
  ReLU, kx1x1 `temporal` conv (stride (s, 1, 1)); no BatchNorm after it (the caller's)."""

  def __init__(self, c_in: int, c_out: int, mid: int, *, stride: int = 1, dtype, rngs):
    self.spatial = layers.Conv3d(c_in, mid, (1, 3, 3), stride=(1, stride, stride),
                                 padding=(0, 1, 1), axes=_INTO_MID, dtype=dtype, rngs=rngs)
    self.norm = layers.BatchNorm(mid, rngs=rngs)
    self.temporal = layers.Conv3d(mid, c_out, (3, 1, 1), stride=(stride, 1, 1),
                                  padding=(1, 0, 0), axes=_FROM_MID, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.temporal(jax.nn.relu(self.norm(self.spatial(x), train)))


def conv(kind: str, c_in: int, c_out: int, mid: int, stride: int, *, dtype, rngs):
  """A block's 3x3x3-conv stand-in of `kind` (see the module docstring)."""
  if kind == "2plus1d":
    return SplitConv(c_in, c_out, mid, stride=stride, dtype=dtype, rngs=rngs)
  if kind == "3d":
    return layers.Conv3d(c_in, c_out, 3, stride=stride, padding=1, dtype=dtype, rngs=rngs)
  return layers.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                       dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x)); conv1 strides `stride`."""

  def __init__(self, kind: str, c_in: int, c_out: int, *, stride: int = 1, dtype, rngs):
    mid = mid_channels(c_in, c_out)
    self.conv1 = conv(kind, c_in, c_out, mid, stride, dtype=dtype, rngs=rngs)
    self.norm1 = layers.BatchNorm(c_out, rngs=rngs)
    self.conv2 = conv(kind, c_out, c_out, mid, 1, dtype=dtype, rngs=rngs)
    self.norm2 = layers.BatchNorm(c_out, rngs=rngs)
    if stride != 1 or c_in != c_out:
      time_stride = 1 if kind == "2d" else stride
      self.downsample = layers.ConvBatchNorm(c_in, c_out, 1, stride=(time_stride, stride, stride),
                                             activation=None, dtype=dtype, rngs=rngs)
    else:
      self.downsample = None

  def _conv(self, conv, x, train):
    return conv(x, train) if isinstance(conv, SplitConv) else conv(x)

  def __call__(self, x, train: bool):
    y = jax.nn.relu(self.norm1(self._conv(self.conv1, x, train), train))
    y = self.norm2(self._conv(self.conv2, y, train), train)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return jax.nn.relu(y + shortcut)


class SplitStem(nnx.Module):
  """R(2+1)D's stem: 1x7x7 conv (stride 1, s, s; torchvision's s = 2) to `mid`, BatchNorm,
  ReLU; 3x1x1 conv, BatchNorm, ReLU."""

  def __init__(self, width: int, mid: int, *, stride: int = 2, dtype, rngs):
    self.spatial = layers.ConvBatchNorm(3, mid, (1, 7, 7), stride=(1, stride, stride),
                                        padding=(0, 3, 3),
                                        axes=(None, None), dtype=dtype, rngs=rngs)
    self.temporal = layers.ConvBatchNorm(mid, width, (3, 1, 1), padding=(1, 0, 0),
                                         axes=_FROM_MID, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.temporal(self.spatial(x, train), train)


class VideoResNet(nnx.Module):
  """Stem, stages of basic blocks, average pool, dropout, Linear (see the module docstring)."""

  def __init__(self, *, num_classes: int, kinds, widths, blocks, stem: str,
               stem_stride: int = 2, head_dropout: float = 0.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not len(kinds) == len(widths) == len(blocks):
      raise ValueError(f"conv kinds {kinds}, widths {widths} and blocks per stage {blocks} must "
                       "have one entry per stage")
    self.head_dropout = head_dropout
    if stem == "2plus1d":
      # torchvision's 45 mid channels at width 64 (the original R(2+1)D's), scaled with it.
      self.stem = SplitStem(widths[0], widths[0] * 45 // 64, stride=stem_stride, dtype=dtype,
                            rngs=rngs)
    else:
      # The stem reads 3 RGB channels, which split over no mesh axis.
      self.stem = layers.ConvBatchNorm(3, widths[0], (3, 7, 7),
                                       stride=(1, stem_stride, stem_stride),
                                       padding=(1, 3, 3), axes=(None, "conv_out"), dtype=dtype,
                                       rngs=rngs)
    stages, c_in = [], widths[0]
    for i, (kind, width, depth) in enumerate(zip(kinds, widths, blocks)):
      stages.append(nnx.List([
          BasicBlock(kind, c_in if j == 0 else width, width, stride=2 if i and j == 0 else 1,
                     dtype=dtype, rngs=rngs)
          for j in range(depth)]))
      c_in = width
    self.layers = nnx.List(stages)
    self.fc = layers.Dense(widths[-1], num_classes, ("embed", "classes"), rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("r2plus1d sees every pixel: set config.model.masking='none'")
    x = self.stem(video, train)
    for stage in self.layers:
      for block in stage:
        x = block(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2, 3))
    x = layers.dropout(x, self.head_dropout, key if train else None)
    return self.fc(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> VideoResNet:
  kinds, widths, blocks, stem = size(model_config)
  return VideoResNet(num_classes=data_config.num_classes, kinds=kinds, widths=widths,
                     blocks=blocks, stem=stem, stem_stride=model_config.r2plus1d.stem_stride,
                     head_dropout=model_config.head_dropout,
                     dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # The size (model.size: one of SIZES) gives each stage's conv kind, the blocks per stage and
  # the stem; these fields override its stages (a narrower or shallower model of its kinds).
  s = ml_collections.ConfigDict()
  s.stage_widths = ()  # channels of each stage, e.g. (16, 32, 64, 128); (): 64, 128, 256, 512
  s.stage_blocks = ()  # basic blocks per stage, e.g. (1, 1, 1, 1); (): the size's
  # The stem's spatial stride (torchvision's 2). 4 for small clips on a CPU (the :cpu variant's
  # 32^2): the first stage, most of the model's work, then runs on 8x8 maps, as cnn3d's does.
  s.stem_stride = 2
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  check_stages(config, "r2plus1d", len(WIDTHS), lambda: size(config.model)[1:3])
  stride = config.model.r2plus1d.stem_stride
  if not (isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1):
    errors.fail("model.r2plus1d.stem_stride", stride, "give a positive int (torchvision: 2)")


FAMILY = Family(
    name="r2plus1d",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
    converters=(torchvision_video.RESNET,),
)
