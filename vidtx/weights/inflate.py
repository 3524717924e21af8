"""Image -> video: the rules that turn an image model's parameters into a video model's.

Used by `vidtx.checkpoint.init_from` (`parameter`, by name and shape) and by the converters of
image checkpoints into video models (`kernel`, `relative_bias_table`, e.g. Swin into TPS):
- a convolution kernel of one frame [1, kh, kw, C, D] becomes [t, kh, kw, C, D] (`kernel`):
  repeated over the t frames and divided by t ("average", I3D's inflation: a clip of equal
  frames gives the image's features) or placed at the central frame t // 2 with zeros elsewhere
  ("central");
- a learned position table of the image's h x w patches (with or without a CLS row) is resized
  bicubically to the model's H' x W' and tiled over its T' frames where the model has a row per
  tubelet; the CLS row is kept for a model with a CLS token and dropped for one without
  (`position_table`);
- a time embedding of another number of frames is resized, nearest (`time_table`);
- a 2-D relative position bias table is repeated for every time offset of a 3-D one
  (`relative_bias_table`);
- MViTv2's decomposed relative position tables (rel_pos_t, rel_pos_h, rel_pos_w: a row per
  offset) of another clip length or crop are resized linearly over their rows
  (`linear_resize_matrix`, as MViTv2 itself resizes them when pooled sizes differ).
"""

import math

import jax
import numpy as np

INFLATIONS = ("average", "central")


def kernel(value: np.ndarray, frames: int, inflation: str) -> np.ndarray:
  """A convolution kernel of one frame [1, kh, kw, C, D] over `frames` frames by `inflation`."""
  if inflation not in INFLATIONS:
    raise ValueError(f"inflation={inflation!r}: choose one of {INFLATIONS}")
  if inflation == "average":  # a clip of equal frames gives the image's features
    return np.repeat(value, frames, axis=0) / frames
  out = np.zeros((frames, *value.shape[1:]), value.dtype)
  out[frames // 2] = value[0]
  return out


def position_table(value: np.ndarray, shape, grid) -> np.ndarray | None:
  """An image's learned position table [(1 +) side^2, D] for a model's table of `shape` over
  its token `grid` (T', H', W'), or None when the model's rows are not a CLS row or none, then
  one per patch of a frame or per tubelet, or when the model has a CLS row the image lacks."""
  frames, height, width = grid
  # The model's rows: a CLS row or none, then one per patch of a frame or per tubelet.
  rows = {cls: shape[0] - cls for cls in (0, 1)
          if shape[0] - cls in (height * width, frames * height * width)}
  # The image's: a CLS row or none, then side x side patches.
  side = math.isqrt(value.shape[0])
  image_cls = value.shape[0] - side * side
  if len(rows) != 1 or image_cls not in (0, 1) or (1 in rows and not image_cls):
    return None
  (cls, patch_rows), = rows.items()
  patches = value[image_cls:].reshape(side, side, -1)
  if (side, side) != (height, width):
    patches = np.asarray(jax.image.resize(patches, (height, width, patches.shape[-1]),
                                          "bicubic"))
  patches = patches.reshape(height * width, -1)
  if patch_rows == frames * height * width:
    patches = np.tile(patches, (frames, 1))  # time-major rows t * H'W' + s
  return np.concatenate([value[:1], patches]) if cls else patches


def time_table(value: np.ndarray, shape) -> np.ndarray:
  """A time embedding [T, D] resized to `shape` [T', D] (nearest, as TimeSformer's reference)."""
  return np.asarray(jax.image.resize(value, tuple(shape), "nearest"))


def relative_bias_table(table: np.ndarray, frames: int) -> np.ndarray:
  """A 2-D relative position bias table [(2w-1)^2, heads] repeated for each of the 2T-1 time
  offsets of a 3-D one [(2T-1) (2w-1)^2, heads] (offset-major), T = `frames`."""
  return np.tile(table, (2 * frames - 1, 1))


def linear_resize_matrix(src: int, dst: int) -> np.ndarray:
  """[dst, src]: the linear map PyTorch's F.interpolate(mode="linear", align_corners=False)
  applies along an axis of `src` samples to give `dst` (the identity when they agree)."""
  x = np.maximum((np.arange(dst) + 0.5) * src / dst - 0.5, 0.0)
  lo = np.minimum(np.floor(x).astype(int), src - 1)
  hi = np.minimum(lo + 1, src - 1)
  matrix = np.zeros((dst, src))
  np.add.at(matrix, (np.arange(dst), lo), 1.0 - (x - lo))
  np.add.at(matrix, (np.arange(dst), hi), x - lo)
  return matrix


RELATIVE_TABLES = ("rel_pos_t", "rel_pos_h", "rel_pos_w")


def parameter(name: str, value: np.ndarray, shape, grid, inflation: str) -> np.ndarray | None:
  """Parameter `name` of `shape` from a checkpoint's `value` of another shape by the rule its
  name and shapes call for, or None when no rule maps them. `grid` (T', H', W'): the model's
  token grid, which position tables need (None: they are not inflated)."""
  shape = tuple(shape)
  if value.shape == shape:
    return value
  if (name.endswith("kernel") and value.ndim == len(shape) == 5 and value.shape[0] == 1
      and value.shape[1:] == shape[1:]):
    return kernel(value, shape[0], inflation)
  if name.endswith("pos_embed/embedding") and grid is not None and value.shape[1] == shape[1]:
    return position_table(value, shape, grid)
  if name.endswith("time_embed/embedding") and value.shape[1:] == shape[1:]:
    return time_table(value, shape)
  if name.endswith(RELATIVE_TABLES) and value.ndim == 2 and value.shape[1:] == shape[1:]:
    return (linear_resize_matrix(value.shape[0], shape[0]) @ value).astype(value.dtype)
  return None
