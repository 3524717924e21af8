"""A plain 3-D CNN with BatchNorm: the smallest convolutional family, the seed of the 3-D CNNs
(R(2+1)D, I3D, X3D, SlowFast) that grow from its pieces.

video [B, T, H, W, 3] -> stem: Conv3d (kernel `stem_kernel`, stride `stem_stride`, padding
kernel // 2) -> BatchNorm -> ReLU -> stages: stage i is `stage_blocks[i]` blocks of 3x3x3
Conv3d (padding 1) -> BatchNorm -> ReLU at `stage_widths[i]` channels, the first block of every
stage after the first striding 2 in space (as ResNets' stages do) -> global average pool over
(T, H, W) -> dropout (model.head_dropout) -> Linear.

The convolutions see every frame, so the clip's length and size are free (no tubelets), and a
clip's motion reaches the pooled feature through the 3-frame kernels. BatchNorm is PyTorch's
(momentum 0.1, eps 1e-5): batch statistics in training, which move its running averages
(`nnx.BatchStat`, carried by the train step and held by checkpoints), those averages in
evaluation.

Parameter paths: "stem/conv/kernel", "stem/norm/{scale, bias, mean, var}",
"stages/<i>/blocks/<j>/{conv, norm}/...", "head/{kernel, bias}".
"""

import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family, check_stages

# config.model.size -> (stage widths, blocks per stage).
SIZES = {
    "tiny": ((16, 32, 64), (1, 1, 1)),
    "small": ((32, 64, 128, 256), (2, 2, 2, 2)),
}


def size(model_config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(stage widths, blocks per stage) of the configured model: the size's, unless overridden."""
  widths, blocks = SIZES[model_config.size]
  s = model_config.cnn3d
  return tuple(s.stage_widths) or widths, tuple(s.stage_blocks) or blocks


class Stage(nnx.Module):
  """`depth` blocks of 3x3x3 Conv3d -> BatchNorm -> ReLU, c_in -> c_out channels; the first
  block strides `spatial_stride` in height and width."""

  def __init__(self, c_in: int, c_out: int, depth: int, *, spatial_stride: int = 1,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        layers.ConvBatchNorm(c_in if i == 0 else c_out, c_out, 3,
                             stride=(1, spatial_stride, spatial_stride) if i == 0 else 1,
                             padding=1, dtype=dtype, rngs=rngs)
        for i in range(depth)])

  def __call__(self, x, train: bool):
    for block in self.blocks:
      x = block(x, train)
    return x


class CNN3D(nnx.Module):
  """Stem, stages, average pool, dropout, Linear head (see the module docstring)."""

  def __init__(self, *, num_classes: int, widths, blocks, stem_kernel=(3, 7, 7),
               stem_stride=(1, 2, 2), head_dropout: float = 0.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if len(widths) != len(blocks):
      raise ValueError(f"stage widths {widths} and blocks per stage {blocks} must have one "
                       "entry per stage")
    self.head_dropout = head_dropout
    stem_kernel = layers.triple(stem_kernel, "stem_kernel")
    # The stem reads 3 RGB channels, which split over no mesh axis.
    self.stem = layers.ConvBatchNorm(3, widths[0], stem_kernel, stride=stem_stride,
                                     padding=tuple(k // 2 for k in stem_kernel),
                                     axes=(None, "conv_out"), dtype=dtype, rngs=rngs)
    self.stages = nnx.List([
        Stage(widths[max(i - 1, 0)], width, depth, spatial_stride=1 if i == 0 else 2,
              dtype=dtype, rngs=rngs)
        for i, (width, depth) in enumerate(zip(widths, blocks))])
    self.head = layers.Dense(widths[-1], num_classes, ("embed", "classes"), rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("cnn3d sees every pixel: set config.model.masking='none'")
    x = self.stem(video, train)
    for stage in self.stages:
      x = stage(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2, 3))
    x = layers.dropout(x, self.head_dropout, key if train else None)
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> CNN3D:
  widths, blocks = size(model_config)
  s = model_config.cnn3d
  return CNN3D(num_classes=data_config.num_classes, widths=widths, blocks=blocks,
               stem_kernel=tuple(s.stem_kernel), stem_stride=tuple(s.stem_stride),
               head_dropout=model_config.head_dropout, dtype=jnp.dtype(model_config.dtype),
               rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # The size (model.size "tiny" or "small") gives the stages; these fields override it.
  s = ml_collections.ConfigDict()
  s.stage_widths = ()  # channels of each stage, e.g. (16, 32, 64); (): the size's
  s.stage_blocks = ()  # conv blocks per stage, e.g. (1, 1, 1); (): the size's
  s.stem_kernel = (3, 7, 7)  # (t, h, w) of the stem's kernel, padded by kernel // 2
  s.stem_stride = (1, 2, 2)
  return s


def _positive_ints(value) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) > 0
          and all(isinstance(v, int) and v >= 1 for v in value))


def _check(config: ml_collections.ConfigDict) -> None:
  s = config.model.cnn3d
  check_stages(config, "cnn3d", None, lambda: size(config.model))
  for field in ("stem_kernel", "stem_stride"):
    if not _positive_ints(s[field]) or len(s[field]) != 3:
      errors.fail(f"model.cnn3d.{field}", s[field], "give (t, h, w) positive ints, e.g. (3, 7, 7)")


FAMILY = Family(
    name="cnn3d",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
)
