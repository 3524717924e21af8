"""The last steps of preprocessing, in JAX on the accelerator, inside the jitted train and eval
steps: the host pipeline sends uint8 clips, a quarter of the bytes of float32 ones to copy,
transfer and hold, and the pixels become the model's normalised float32 input here.

`train_clips`: with config.data.host_augment False, RandAugment and colour jitter (the host's
most expensive work, vidtx.data.transforms) run here instead of on the host; then normalising,
and random erasing (a per-pixel noise box, which no uint8 clip can hold). `eval_clips`
normalises. The ops compute what the host's versions compute (tests/data/test_on_device.py
compares them op by op); only the random draws differ (JAX's generator instead of TF's).
Random choices come from the step's key and each clip's index in the global batch, so they do
not depend on the mesh, and a resumed run repeats them exactly.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vidtx.data import transforms

# Random erasing's box (timm's defaults, as VideoMAE uses): its area as a fraction of the
# frame's, its aspect ratio (height / width), and how many draws may try to fit it.
ERASE_AREA = (0.02, 1 / 3)
ERASE_RATIO = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 10


def normalize(video, mean, std):
  """uint8 (or float) pixels in [0, 255] -> float32 (x / 255 - mean) / std per channel."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return (video.astype(jnp.float32) / 255.0 - mean) / std


def erase_box(key, height: int, width: int):
  """Random erasing's box: (erase, top, left, box_height, box_width). Its area is uniform in
  ERASE_AREA times the frame's and its aspect log-uniform in ERASE_RATIO; the first of
  ERASE_ATTEMPTS draws that fits strictly inside the frame is used (erase False: none fits)."""
  u = jax.random.uniform(key, (4, ERASE_ATTEMPTS))
  target = height * width * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[0])
  log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
  box_h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (box_h < height) & (box_w < width)
  first = jnp.argmax(fits)
  box_h, box_w = box_h[first], box_w[first]
  top = (u[2, first] * (height - box_h + 1)).astype(jnp.int32)
  left = (u[3, first] * (width - box_w + 1)).astype(jnp.int32)
  return jnp.any(fits), top, left, box_h, box_w


def random_erasing(key, clip, probability: float):
  """With `probability`, one box of normalised clip [T, H, W, C] becomes N(0, 1) noise (timm's
  "pixel" mode), the same box and noise on every frame."""
  _, h, w, c = clip.shape
  box_key, apply_key, noise_key = jax.random.split(key, 3)
  erase, top, left, box_h, box_w = erase_box(box_key, h, w)
  erase &= jax.random.uniform(apply_key) < probability
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = erase & (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
  noise = jax.random.normal(noise_key, (h, w, c), clip.dtype)
  return jnp.where(box[None, :, :, None], noise[None], clip)


# ---------------------------------------------------------------------------------------------
# RandAugment and colour jitter: the ops of vidtx.data.transforms (timm's increasing set, each
# f(x, level, sign) on float32 pixels in [0, 255] of a whole clip [T, H, W, 3]).


def _gray(x):
  """ITU-R 601 luma (PIL's "L"), keeping a channel axis of 1."""
  return (x @ jnp.array([0.299, 0.587, 0.114], jnp.float32))[..., None]


def _blend(degenerate, x, factor):
  return jnp.clip(degenerate + factor * (x - degenerate), 0.0, 255.0)


def _smooth(x):
  """PIL's SMOOTH filter (3x3, centre weight 5, all /13); the border keeps its pixels."""
  h, w = x.shape[1], x.shape[2]
  total = 4.0 * x[:, 1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total += x[:, dy:h - 2 + dy, dx:w - 2 + dx]
  inner = jnp.concatenate([x[:, 1:-1, :1], total / 13.0, x[:, 1:-1, -1:]], axis=2)
  return jnp.concatenate([x[:, :1], inner, x[:, -1:]], axis=1)


def _equalize(x):
  """Histogram equalisation per channel over the whole clip (PIL's ImageOps.equalize)."""
  binned = jnp.clip(jnp.round(x), 0, 255).astype(jnp.int32) + jnp.arange(0, 768, 256)
  hist = jnp.zeros(768, jnp.int32).at[binned.ravel()].add(1).reshape(3, 256)
  last = 255 - jnp.argmax(hist[:, ::-1] > 0, axis=1)
  step = (hist.sum(1) - jnp.take_along_axis(hist, last[:, None], 1)[:, 0]) // 255
  lut = (jnp.cumsum(hist, axis=1) - hist + step[:, None] // 2) // jnp.maximum(step[:, None], 1)
  # A channel with a single value (step 0) is left as it is.
  lut = jnp.where(step[:, None] > 0, jnp.clip(lut, 0, 255), jnp.arange(256)[None])
  return lut.ravel()[binned].astype(jnp.float32)


def _auto_contrast(x):
  lo, hi = x.min(axis=(0, 1, 2)), x.max(axis=(0, 1, 2))
  scale = jnp.where(hi > lo, 255.0 / jnp.maximum(hi - lo, 1e-6), 1.0)
  return jnp.where(hi > lo, (x - lo) * scale, x)


def _affine(x, matrix):
  """Output pixel (col, row) samples input (a0 col + a1 row + a2, b0 col + b1 row + b2);
  bilinear, the outside gray 128 (timm's fill)."""
  a0, a1, a2, b0, b1, b2 = matrix
  t, h, w, c = x.shape
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  src_x, src_y = a0 * cols + a1 * rows + a2, b0 * cols + b1 * rows + b2
  x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
  fx, fy = (src_x - x0).reshape(-1, 1), (src_y - y0).reshape(-1, 1)
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  pixels = x.transpose(1, 2, 0, 3).reshape(h * w, t * c)

  def neighbour(y, x):
    inside = ((y >= 0) & (y < h) & (x >= 0) & (x < w)).reshape(-1, 1)
    index = jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)
    return jnp.where(inside, pixels[index.ravel()], 128.0)

  out = ((neighbour(y0, x0) * (1 - fx) + neighbour(y0, x0 + 1) * fx) * (1 - fy)
         + (neighbour(y0 + 1, x0) * (1 - fx) + neighbour(y0 + 1, x0 + 1) * fx) * fy)
  return out.reshape(h, w, t, c).transpose(2, 0, 1, 3)


def _rotation(degrees, h, w):
  """The affine matrix of a rotation about the frame's centre."""
  cy, cx = (h - 1) / 2, (w - 1) / 2
  angle = degrees * math.pi / 180
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]


# The geometric ops, as their affine matrices (level, sign, height, width) -> 6 numbers.
AFFINE_OPS = {
    "Rotate": lambda level, sign, h, w: _rotation(sign * 30.0 * level, h, w),
    "ShearX": lambda level, sign, h, w: [1.0, sign * 0.3 * level, 0.0, 0.0, 1.0, 0.0],
    "ShearY": lambda level, sign, h, w: [1.0, 0.0, 0.0, sign * 0.3 * level, 1.0, 0.0],
    "TranslateX": lambda level, sign, h, w: [1.0, 0.0, sign * 0.45 * level * w, 0.0, 1.0, 0.0],
    "TranslateY": lambda level, sign, h, w: [1.0, 0.0, 0.0, 0.0, 1.0, sign * 0.45 * level * h],
}
PIXEL_OPS = {
    "AutoContrast": lambda x, level, sign: _auto_contrast(x),
    "Equalize": lambda x, level, sign: _equalize(x),
    "Invert": lambda x, level, sign: 255.0 - x,
    "Posterize": lambda x, level, sign: (
        lambda shift: jnp.floor(x / shift) * shift)(2.0 ** (4.0 + jnp.floor(4.0 * level))),
    "Solarize": lambda x, level, sign: jnp.where(x >= 256.0 - jnp.floor(256.0 * level),
                                                 255.0 - x, x),
    "SolarizeAdd": lambda x, level, sign: jnp.where(
        x < 128.0, jnp.minimum(x + jnp.floor(110.0 * level), 255.0), x),
    "Color": lambda x, level, sign: _blend(_gray(x), x, 1.0 + sign * 0.9 * level),
    "Contrast": lambda x, level, sign: _blend(jnp.mean(_gray(x)), x, 1.0 + sign * 0.9 * level),
    "Brightness": lambda x, level, sign: _blend(0.0, x, 1.0 + sign * 0.9 * level),
    "Sharpness": lambda x, level, sign: _blend(_smooth(x), x, 1.0 + sign * 0.9 * level),
}
# The host's op order, so that op i is the same op on both sides.
OP_NAMES = tuple(transforms.RANDAUGMENT_OPS)
assert set(OP_NAMES) == set(AFFINE_OPS) | set(PIXEL_OPS)


def randaugment_op(name):
  """f(x, level, sign) of one op by name, as the host's transforms.RANDAUGMENT_OPS[name]."""
  if name in AFFINE_OPS:
    return lambda x, level, sign: _affine(x, AFFINE_OPS[name](level, sign, *x.shape[1:3]))
  return PIXEL_OPS[name]


def _randaugment_layer(key, x, magnitude):
  """One layer on one clip: an op drawn uniformly, applied with probability
  RANDAUGMENT_APPLY_PROB at a level drawn around `magnitude`. A real branch (lax.switch): only
  the drawn op runs, as long as no vmap turns the branches into a select of all of them."""
  op = jax.random.randint(jax.random.fold_in(key, 0), (), 0, len(OP_NAMES))
  apply, negate = jax.random.uniform(jax.random.fold_in(key, 1), (2,)) < jnp.array(
      [transforms.RANDAUGMENT_APPLY_PROB, 0.5])
  noise = jax.random.normal(jax.random.fold_in(key, 2))
  level = jnp.clip(magnitude + transforms.RANDAUGMENT_MAGNITUDE_STD * noise, 0.0, 10.0) / 10.0
  sign = jnp.where(negate, -1.0, 1.0)
  branches = [lambda x, f=randaugment_op(name): f(x, level, sign) for name in OP_NAMES]
  return jax.lax.cond(apply, lambda x: jax.lax.switch(op, branches, x), lambda x: x, x)


def randaugment(key, clip, num_layers: int, magnitude: float):
  """`num_layers` RandAugment layers on clip [T, H, W, 3] (pixels in [0, 255]), float32."""
  x = jnp.asarray(clip, jnp.float32)
  for i in range(num_layers):
    x = _randaugment_layer(jax.random.fold_in(key, i), x, magnitude)
  return x


def _fraction(x):
  """x mod 1, as x - floor(x): XLA:CPU runs `%` on floats as a call per element."""
  return x - jnp.floor(x)


def _rgb_to_hsv(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = rgb.max(-1)
  chroma = value - rgb.min(-1)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(value == r, (g - b) / safe,
                  jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(chroma > 0, _fraction(hue / 6.0), 0.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  return hue, saturation, value


def _hsv_to_rgb(hue, saturation, value):
  # Each channel is value minus chroma times a clipped triangle wave of the hue.
  k = 6.0 * _fraction((jnp.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) / 6.0)
  wave = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return value[..., None] - (value * saturation)[..., None] * wave


def adjust_hue(x, delta):
  """Rotates the hue of pixels in [0, 255] by `delta` turns (tf.image.adjust_hue's result)."""
  hue, saturation, value = _rgb_to_hsv(x / 255.0)
  return _hsv_to_rgb(_fraction(hue + delta), saturation, value) * 255.0


def color_jitter(key, clip, strength: float):
  """transforms.color_jitter: brightness, contrast and saturation factors uniform in
  1 +- strength and a hue shift uniform in +-strength/4 of a turn, in that order."""
  u = jax.random.uniform(key, (4,), minval=-1.0, maxval=1.0)
  x = jnp.clip(jnp.asarray(clip, jnp.float32) * (1.0 + strength * u[0]), 0.0, 255.0)
  x = _blend(jnp.mean(_gray(x)), x, 1.0 + strength * u[1])
  x = _blend(_gray(x), x, 1.0 + strength * u[2])
  return adjust_hue(x, strength / 4 * u[3])


def train_clips(data_config, video, key, indices=None):
  """Train batch video uint8 [B, T, H, W, 3] -> the model's float32 input. With
  config.data.host_augment False, RandAugment and colour jitter first; then normalised, and
  randomly erased with probability config.data.random_erasing. Clip i of the global batch draws
  from fold_in(key, indices[i]) (default indices: 0..B-1).

  The clips go one after the other (lax.map), so that each runs only the RandAugment ops it
  drew: vmapped, every layer would compute all 15 ops for every clip (~20x the work, measured
  on XLA:CPU). Inside shard_map each device maps its own clips (vidtx.train does so).
  """
  d = data_config
  if indices is None:
    indices = jnp.arange(video.shape[0])

  def one(index_and_clip):
    index, clip = index_and_clip
    clip_key = jax.random.fold_in(key, index)
    x = clip
    if not d.host_augment and d.randaugment_layers:
      x = randaugment(jax.random.fold_in(clip_key, 0), x, d.randaugment_layers,
                      d.randaugment_magnitude)
    if not d.host_augment and d.color_jitter:
      x = color_jitter(jax.random.fold_in(clip_key, 1), x, d.color_jitter)
    x = normalize(x, d.mean, d.std)
    if d.random_erasing:
      x = random_erasing(jax.random.fold_in(clip_key, 2), x, d.random_erasing)
    return x

  return jax.lax.map(one, (indices, video))


def sharded_train_clips(data_config, mesh, batch_spec):
  """(video, key, indices) -> `train_clips` of a batch laid out by `batch_spec` on `mesh`: each
  device augments, normalises and erases its own clips, each clip drawing from the key and its
  index in the global batch, so the clips are the same on any mesh."""
  return jax.shard_map(functools.partial(train_clips, data_config), mesh=mesh,
                       in_specs=(batch_spec, P(), P(batch_spec[0])), out_specs=batch_spec)


def eval_clips(data_config, video):
  """Eval video uint8 [..., H, W, 3] (any leading axes: views) -> normalised float32."""
  return normalize(video, data_config.mean, data_config.std)
