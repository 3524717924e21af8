"""Per-clip transforms of the input pipeline, in pure TF (usable inside tf.data maps).

A clip is [T, H, W, 3]. Every random transform takes a stateless seed `key` (int64 [2]) and
applies one draw to every frame, so a clip stays one consistent video: the same crop box, flip,
RandAugment ops and magnitudes and colour factors on all frames. Data-dependent ops
(AutoContrast, Equalize, Contrast) take their statistics over the whole clip, so even they map
every frame through the same function. Pixels are in [0, 255]; the clips leave the host as
uint8 (`to_uint8`), normalised and randomly erased on the device (vidtx.data.on_device).

Element-wise work on whole clips runs through `_compiled` (XLA, which fuses it into one pass
over the clip): several times faster per core than TF's op-by-op kernels.
"""

import math
import re

import tensorflow as tf

fold_in = tf.random.experimental.stateless_fold_in


def _uniform(key, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
  return tf.random.stateless_uniform(shape, key, minval=minval, maxval=maxval, dtype=dtype,
                                     alg="philox")


def _compiled(f):
  """`f` compiled by XLA when called, also from inside a tf.data map."""
  return tf.function(f, jit_compile=True, autograph=False)


def _frame_count(num_available):
  num_available = tf.convert_to_tensor(num_available, tf.int32)
  tf.debugging.assert_positive(num_available, message="A video has no frames.")
  return num_available


# ---------------------------------------------------------------------------------------------
# Frame samplers: which stored frames make a clip. With a key, one random train clip
# [num_frames]; without, `num_clips` evaluation clips [num_clips, num_frames].


def dense_indices(num_available, num_frames, stride, key=None, num_clips=1):
  """`num_frames` frames `stride` apart.

  Train: the start is uniform in [0, max_start], max_start = n - ((num_frames - 1) * stride + 1).
  Eval: `num_clips` starts evenly spaced from 0 to max_start (rounded down, as PySlowFast and
  VideoMAE test); a single clip is centred (start max_start // 2).
  A video shorter than the window starts at 0 and loops: n=3, 5 frames -> 0 1 2 0 1.
  """
  n = _frame_count(num_available)
  max_start = tf.maximum(n - ((num_frames - 1) * stride + 1), 0)
  offsets = tf.range(num_frames) * stride
  if key is not None:
    start = _uniform(key, minval=0, maxval=max_start + 1, dtype=tf.int32)
    return (start + offsets) % n
  if num_clips == 1:
    starts = tf.reshape(max_start // 2, [1])
  else:
    starts = tf.range(num_clips) * max_start // (num_clips - 1)
  return (starts[:, None] + offsets[None]) % n


def segment_indices(num_available, num_frames, key=None, num_clips=1):
  """TSN sampling: one frame from each of `num_frames` equal segments [i n/T, (i+1) n/T).

  Train: a uniform position in every segment (independently). Eval: clip k takes the frame at
  fraction (2k + 1) / (2 num_clips) of every segment, so one clip takes the middle frames.
  Segments are real-valued, so a video with fewer frames than segments repeats frames:
  n=3, 5 frames -> eval 0 0 1 2 2; n = num_frames -> always 0 1 ... n-1.
  """
  n = _frame_count(num_available)
  if key is not None:
    where = _uniform(key, [1, num_frames], dtype=tf.float64)
  else:
    where = ((2 * tf.range(num_clips, dtype=tf.float64) + 1) / (2 * num_clips))[:, None]
  position = (tf.range(num_frames, dtype=tf.float64)[None] + where) * tf.cast(
      n, tf.float64) / num_frames
  indices = tf.minimum(tf.cast(tf.floor(position), tf.int32), n - 1)  # guards float rounding
  return indices[0] if key is not None else indices


# ---------------------------------------------------------------------------------------------
# Decoding, resizing, cropping, flipping, rounding to uint8.


def decode_frames(encoded):
  """Decodes JPEG (DMVR) or PNG (TFDS video) frames [T] string -> uint8 [T, H, W, 3]."""
  return tf.map_fn(lambda x: tf.io.decode_image(x, channels=3, expand_animations=False),
                   encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def resize_short_side(frames, size):
  """Resizes [T, H, W, C] so min(H, W) == size (bilinear); returns float32. `size` may be a
  tensor (scale jitter)."""
  h, w = tf.shape(frames)[1], tf.shape(frames)[2]
  short = tf.minimum(h, w)

  def resize():
    # Integer rounding keeps the short side exactly `size`.
    new_h, new_w = (h * size + short // 2) // short, (w * size + short // 2) // short
    return tf.image.resize(frames, tf.stack([new_h, new_w]), method="bilinear")

  return tf.cond(short == size, lambda: tf.cast(frames, tf.float32), resize)


def _crop(frames, top, left, height, width):
  """Crops the H, W axes of [..., H, W, C] (any leading axes)."""
  return frames[..., top:top + height, left:left + width, :]


def center_crop(frames, size):
  h, w = tf.shape(frames)[-3], tf.shape(frames)[-2]
  return _crop(frames, (h - size) // 2, (w - size) // 2, size, size)


def spatial_crops(frames, size, num_crops):
  """Test-time crops of [..., H, W, 3] -> [num_crops, ..., size, size, 3].

  1: the centre. 3: start, centre and end of the long side (left/centre/right of a landscape
  video, top/centre/bottom of a portrait one), centred on the short side, as in PySlowFast's
  and VideoMAE's 3-crop testing.
  """
  h, w = tf.shape(frames)[-3], tf.shape(frames)[-2]
  crops = []
  for along in ([1] if num_crops == 1 else [0, 1, 2]):  # 0 start, 1 centre, 2 end
    portrait = h > w
    top = tf.where(portrait, (h - size) * along // 2, (h - size) // 2)
    left = tf.where(portrait, (w - size) // 2, (w - size) * along // 2)
    crops.append(_crop(frames, top, left, size, size))
  return tf.stack(crops)


def random_crop(frames, size, key):
  """The same random crop for every frame (the time axis is kept whole)."""
  num_frames = frames.shape[0]
  return tf.image.stateless_random_crop(frames, [num_frames, size, size, 3], seed=key)


def random_resized_box(height, width, key, scale, ratio, attempts=10):
  """Inception-style box (top, left, box_height, box_width) in a height x width frame.

  Draws an area of uniform(scale) times the frame area and an aspect ratio (width / height)
  log-uniform in `ratio`; the first of `attempts` draws that fits is used. If none fits, the
  centred box of the whole frame with the aspect ratio clamped into `ratio`.
  """
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  u = _uniform(key, [4, attempts])
  area = tf.cast(height * width, tf.float32) * (scale[0] + (scale[1] - scale[0]) * u[0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  box_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  box_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found_h, found_w = box_h[first], box_w[first]
  top = tf.cast(u[2][first] * tf.cast(height - found_h + 1, tf.float32), tf.int32)
  left = tf.cast(u[3][first] * tf.cast(width - found_w + 1, tf.float32), tf.int32)
  # Fallback: the whole frame, narrowed to the nearest allowed aspect ratio.
  frame_aspect = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
  fallback_w = tf.where(frame_aspect > ratio[1],
                        tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32),
                        width)
  fallback_h = tf.where(frame_aspect < ratio[0],
                        tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32),
                        height)
  any_fits = tf.reduce_any(fits)
  box_h = tf.where(any_fits, found_h, fallback_h)
  box_w = tf.where(any_fits, found_w, fallback_w)
  top = tf.where(any_fits, top, (height - box_h) // 2)
  left = tf.where(any_fits, left, (width - box_w) // 2)
  return top, left, box_h, box_w


def random_resized_crop(frames, size, key, scale, ratio):
  """One `random_resized_box` for all frames, resized to size x size (bilinear); float32."""
  top, left, box_h, box_w = random_resized_box(tf.shape(frames)[1], tf.shape(frames)[2], key,
                                               scale, ratio)
  frames = tf.image.resize(_crop(frames, top, left, box_h, box_w), [size, size],
                           method="bilinear")
  return tf.ensure_shape(frames, [frames.shape[0], size, size, 3])


def flip(frames):
  """Mirrors every frame left-right."""
  return tf.reverse(frames, axis=[-2])


_LEFT_RIGHT = re.compile(r"(?<![a-z])(left|right)(?![a-z])")


def flip_table(class_names):
  """For every label, its label after a left-right flip, or -1 where a flip has no label.

  Two classes are mirror images when their names are equal after swapping the words "left"
  and "right" (case-insensitive; a word is not part of a longer run of letters, so
  "move_left" counts and "leftover" does not). Classes without either word keep their label.
  Classes with such a word but no partner (SSv2's "...pulling it right out..." idiom) get -1:
  their clips are never flipped, as the mirrored label is unknown.
  """
  names = [name.lower() for name in class_names]
  if len(set(names)) != len(names):
    duplicates = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f"the class names repeat {duplicates}: labels need unique names")
  index = {name: i for i, name in enumerate(names)}
  swap = {"left": "right", "right": "left"}
  table = []
  for i, name in enumerate(names):
    mirrored = _LEFT_RIGHT.sub(lambda m: swap[m.group(1)], name)
    table.append(i if mirrored == name else index.get(mirrored, -1))
  return table


def random_flip(frames, label, key, table=None):
  """Flips the clip with probability 1/2; returns (frames, label).

  With a `flip_table` the label follows the flip (a left-to-right class becomes its
  right-to-left partner) and clips whose label maps to -1 are never flipped.
  """
  flipped = _uniform(key) < 0.5
  if table is not None:
    mirrored = tf.gather(tf.constant(table, tf.int32), label)
    flipped &= mirrored >= 0
    label = tf.where(flipped, mirrored, label)
  return tf.cond(flipped, lambda: flip(frames), lambda: frames), label


@_compiled
def to_uint8(frames):
  """Pixels in [0, 255] rounded to uint8: what the host sends (normalised on the device,
  vidtx.data.on_device)."""
  return tf.cast(tf.clip_by_value(tf.round(tf.cast(frames, tf.float32)), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------------------------------------
# Colour helpers (float32 pixels in [0, 255]).


def _gray(x):
  """ITU-R 601 luma (PIL's "L"), keeping a channel axis of 1."""
  return tf.tensordot(x, tf.constant([0.299, 0.587, 0.114]), axes=1)[..., None]


def _blend(degenerate, x, factor):
  """degenerate + factor * (x - degenerate), clipped: factor 1 is the identity, 0 the
  degenerate image, > 1 extrapolates (PIL ImageEnhance)."""
  return tf.clip_by_value(degenerate + factor * (x - degenerate), 0.0, 255.0)


def _smooth(x):
  """PIL's SMOOTH filter (3x3, centre weight 5, all /13); the border keeps its pixels. Sums of
  shifted slices rather than a convolution, so XLA fuses it with the blend around it."""
  h, w = x.shape[1], x.shape[2]
  total = 4.0 * x[:, 1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total += x[:, dy:h - 2 + dy, dx:w - 2 + dx]
  return tf.concat([x[:, :1], tf.concat([x[:, 1:-1, :1], total / 13.0, x[:, 1:-1, -1:]], 2),
                    x[:, -1:]], 1)


def _equalize(x):
  """Histogram equalisation per channel over the whole clip (PIL's ImageOps.equalize). One
  histogram of 3 x 256 bins (bin 256 c + value) and one table lookup for all channels."""
  binned = _bins(x)
  hist = tf.reshape(tf.math.bincount(binned, minlength=768, maxlength=768), [3, 256])
  last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1,
                         output_type=tf.int32)
  step = (tf.reduce_sum(hist, 1) - tf.gather(hist, last, batch_dims=1)) // 255
  lut = (tf.cumsum(hist, axis=1, exclusive=True) + step[:, None] // 2) // tf.maximum(
      step[:, None], 1)
  # A channel with a single value (step 0) is left as it is.
  lut = tf.where(step[:, None] > 0, tf.clip_by_value(lut, 0, 255), tf.range(256)[None])
  return _look_up(tf.reshape(lut, [-1]), binned)


@_compiled
def _bins(x):
  return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.int32) + tf.range(0, 768, 256)


@_compiled
def _look_up(table, indices):
  return tf.cast(tf.gather(table, indices), tf.float32)


def _auto_contrast(x):
  """Stretches every channel's clip-wide [min, max] to [0, 255]."""
  lo = tf.reduce_min(x, axis=[0, 1, 2])
  hi = tf.reduce_max(x, axis=[0, 1, 2])
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
  return tf.where(hi > lo, (x - lo) * scale, x)


def _affine(x, matrix):
  """Output pixel (col, row) samples input (a0 col + a1 row + a2, b0 col + b1 row + b2);
  bilinear, the outside filled with gray 128 (timm's fill). Each of the four neighbours is one
  gather of whole pixels (all frames and channels), which XLA runs fast."""
  a0, a1, a2, b0, b1, b2 = matrix
  t, h, w, c = x.shape
  cols = tf.range(w, dtype=tf.float32)[None, :]
  rows = tf.range(h, dtype=tf.float32)[:, None]
  src_x, src_y = a0 * cols + a1 * rows + a2, b0 * cols + b1 * rows + b2
  x0, y0 = tf.floor(src_x), tf.floor(src_y)
  fx, fy = tf.reshape(src_x - x0, [-1, 1]), tf.reshape(src_y - y0, [-1, 1])
  x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  pixels = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [h * w, t * c])

  def neighbour(y, x):
    inside = tf.reshape((y >= 0) & (y < h) & (x >= 0) & (x < w), [-1, 1])
    index = tf.clip_by_value(y, 0, h - 1) * w + tf.clip_by_value(x, 0, w - 1)
    return tf.where(inside, tf.gather(pixels, tf.reshape(index, [-1])), 128.0)

  out = ((neighbour(y0, x0) * (1 - fx) + neighbour(y0, x0 + 1) * fx) * (1 - fy)
         + (neighbour(y0 + 1, x0) * (1 - fx) + neighbour(y0 + 1, x0 + 1) * fx) * fy)
  return tf.transpose(tf.reshape(out, [h, w, t, c]), [2, 0, 1, 3])


def _rotate(x, degrees):
  h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  angle = degrees * math.pi / 180
  cos, sin = tf.cos(angle), tf.sin(angle)
  # About the centre: input = centre + R (output - centre).
  return _affine(x, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])


# ---------------------------------------------------------------------------------------------
# RandAugment (timm's "increasing" op set, as VideoMAE's rand-m7-n4-mstd0.5-inc1 uses).
# Every op is f(x, level, sign): level = magnitude / 10 in [0, 1], sign = +-1 for the ops
# whose direction is random. Strengths at level 1 follow timm: rotate 30 degrees, shear 0.3,
# translate 45% of the side, enhance factors 1 +- 0.9, posterize to 0 bits, solarize all.

RANDAUGMENT_OPS = {
    "AutoContrast": lambda x, level, sign: _auto_contrast(x),
    "Equalize": lambda x, level, sign: _equalize(x),
    "Invert": lambda x, level, sign: 255.0 - x,
    "Rotate": lambda x, level, sign: _rotate(x, sign * 30.0 * level),
    # Keeps 4 - floor(4 level) high bits.
    "Posterize": lambda x, level, sign: (
        lambda shift: tf.floor(x / shift) * shift)(2.0 ** (4.0 + tf.floor(4.0 * level))),
    # Inverts pixels >= 256 - floor(256 level).
    "Solarize": lambda x, level, sign: tf.where(x >= 256.0 - tf.floor(256.0 * level),
                                                255.0 - x, x),
    "SolarizeAdd": lambda x, level, sign: tf.where(
        x < 128.0, tf.minimum(x + tf.floor(110.0 * level), 255.0), x),
    "Color": lambda x, level, sign: _blend(_gray(x), x, 1.0 + sign * 0.9 * level),
    "Contrast": lambda x, level, sign: _blend(tf.reduce_mean(_gray(x)), x,
                                              1.0 + sign * 0.9 * level),
    "Brightness": lambda x, level, sign: _blend(0.0, x, 1.0 + sign * 0.9 * level),
    "Sharpness": lambda x, level, sign: _blend(_smooth(x), x, 1.0 + sign * 0.9 * level),
    "ShearX": lambda x, level, sign: _affine(x, [1.0, sign * 0.3 * level, 0.0, 0.0, 1.0, 0.0]),
    "ShearY": lambda x, level, sign: _affine(x, [1.0, 0.0, 0.0, sign * 0.3 * level, 1.0, 0.0]),
    "TranslateX": lambda x, level, sign: _affine(x, [
        1.0, 0.0, sign * 0.45 * level * tf.cast(tf.shape(x)[2], tf.float32), 0.0, 1.0, 0.0]),
    "TranslateY": lambda x, level, sign: _affine(x, [
        1.0, 0.0, 0.0, 0.0, 1.0, sign * 0.45 * level * tf.cast(tf.shape(x)[1], tf.float32)]),
}
# Every op but Equalize (XLA has no bincount) runs compiled.
_COMPILED_OPS = {name: _compiled(op) for name, op in RANDAUGMENT_OPS.items()
                 if name != "Equalize"}
RANDAUGMENT_APPLY_PROB = 0.5  # each chosen op runs with this probability (timm)
RANDAUGMENT_MAGNITUDE_STD = 0.5  # the magnitude is drawn from N(magnitude, std) per op (mstd0.5)


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def _randaugment_layer(x, key, magnitude):
  """One RandAugment layer. A tf.function, so its 15 branches are built once per clip shape
  and shared by every layer and clip (building them inline makes tf.data maps slow to trace)."""
  ops = [_COMPILED_OPS.get(name, op) for name, op in RANDAUGMENT_OPS.items()]
  op = _uniform(fold_in(key, 0), minval=0, maxval=len(ops), dtype=tf.int32)
  apply, negate = tf.unstack(_uniform(fold_in(key, 1), [2]) < [RANDAUGMENT_APPLY_PROB, 0.5])
  noise = tf.random.stateless_normal([], fold_in(key, 2), alg="philox")
  level = tf.clip_by_value(magnitude + RANDAUGMENT_MAGNITUDE_STD * noise, 0.0, 10.0) / 10.0
  sign = tf.where(negate, -1.0, 1.0)
  branches = [lambda f=f: tf.ensure_shape(f(x, level, sign), x.shape) for f in ops]
  return tf.cond(apply, lambda: tf.switch_case(op, branches), lambda: x)


def randaugment(frames, key, num_layers, magnitude):
  """`num_layers` ops drawn uniformly (with repetition) from RANDAUGMENT_OPS, each applied with
  probability 1/2 at a magnitude drawn around `magnitude` (0-10) and clipped to [0, 10]."""
  x = tf.cast(frames, tf.float32)
  magnitude = tf.constant(magnitude, tf.float32)
  for i in range(num_layers):
    x = _randaugment_layer(x, fold_in(key, i), magnitude)
  return x


def color_jitter(frames, key, strength):
  """Brightness, contrast and saturation factors uniform in [1 - strength, 1 + strength] and a
  hue shift uniform in +-strength/4 of a turn, applied in that order, the same for all frames."""
  u = _uniform(key, [4], minval=-1.0, maxval=1.0)
  x = tf.clip_by_value(tf.cast(frames, tf.float32) * (1.0 + strength * u[0]), 0.0, 255.0)
  x = _blend(tf.reduce_mean(_gray(x)), x, 1.0 + strength * u[1])
  x = _blend(_gray(x), x, 1.0 + strength * u[2])
  return tf.image.adjust_hue(x / 255.0, strength / 4 * u[3]) * 255.0
