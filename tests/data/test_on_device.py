"""Tests of the preprocessing that runs on the device: normalisation and random erasing of the
uint8 clips the host sends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from vidtx import configuration
from vidtx.data import on_device, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def data_config(random_erasing=0.0, **overrides):
  d = configuration.base().data
  d.update(random_erasing=random_erasing, **overrides)
  return d


def test_normalize_numbers():
  out = on_device.normalize(jnp.array([[255, 0, 51]], jnp.uint8), MEAN, STD)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [[(1 - 0.485) / 0.229, -0.456 / 0.224, (0.2 - 0.406) / 0.225]],
                             rtol=1e-6)


def erased_box(before, after):
  """(rows, cols) extent of the pixels that changed, after checking that they form one box, the
  same on every frame, of the same noise on every frame."""
  changed = np.any(np.abs(before - after) > 1e-4, axis=-1)  # jit may round normalising apart
  assert (changed == changed[0]).all()
  rows, cols = np.flatnonzero(changed[0].any(1)), np.flatnonzero(changed[0].any(0))
  assert changed[0][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  assert changed[0].sum() == len(rows) * len(cols)
  for frame in after[1:]:
    np.testing.assert_array_equal(frame[changed[0]], after[0][changed[0]])
  return len(rows), len(cols)


def test_random_erasing_fills_one_box_of_timm_s_size_and_shape():
  clip = jnp.full((3, 32, 40, 3), 5.0)  # noise never equals 5.0 exactly
  erase = jax.jit(jax.vmap(lambda k: on_device.random_erasing(k, clip, 1.0)))
  out = np.asarray(erase(jax.random.split(jax.random.key(0), 200)))
  areas, aspects = [], []
  for clip_out in out:
    h, w = erased_box(np.asarray(clip), clip_out)
    areas.append(h * w / (32 * 40))
    aspects.append(h / w)
  # Area uniform in [0.02, 1/3] of the frame, aspect log-uniform in [0.3, 1/0.3] (rounding).
  assert 0.02 * 0.7 <= min(areas) and max(areas) <= 1 / 3 * 1.15
  assert abs(np.mean(areas) - (0.02 + 1 / 3) / 2) < 0.03
  assert 0.3 * 0.8 <= min(aspects) and max(aspects) <= 1 / 0.3 * 1.25
  assert abs(np.mean(np.log(aspects))) < 0.15
  noise = out[:, 0][np.any(out[:, 0] != 5.0, axis=-1)]
  assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05  # N(0, 1)


def test_erasing_probability_and_off():
  clip = jnp.full((2, 16, 16, 3), 5.0)
  erase = jax.jit(jax.vmap(lambda k: on_device.random_erasing(k, clip, 0.25)))
  out = np.asarray(erase(jax.random.split(jax.random.key(1), 400)))
  assert 0.18 < np.mean(np.any(out != 5.0, axis=(1, 2, 3, 4))) < 0.32
  np.testing.assert_array_equal(on_device.random_erasing(jax.random.key(0), clip, 0.0), clip)


def test_train_clips_normalise_and_erase_each_clip_from_its_own_key():
  video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 2, 16, 16, 3)), jnp.uint8)
  key = jax.random.key(3)
  plain = on_device.train_clips(data_config(0.0), video, key)
  np.testing.assert_allclose(plain, on_device.eval_clips(data_config(0.0), video), atol=1e-6)
  erased = np.asarray(jax.jit(lambda v, k: on_device.train_clips(data_config(1.0), v, k))(
      video, key))
  boxes = [erased_box(np.asarray(plain[i]), erased[i]) for i in range(6)]
  assert len(set(boxes)) > 1  # each clip its own box
  # Clip i depends only on (key, i): the same clip in a smaller batch gets the same box.
  again = on_device.train_clips(data_config(1.0), video[:3], key)
  np.testing.assert_allclose(np.asarray(again), erased[:3], atol=1e-5)


def texture(shape=(3, 24, 20), seed=0):
  """A clip of identical, smoothly textured frames (float32 pixels), so resampling is tame."""
  rng = np.random.default_rng(seed)
  frame = rng.integers(0, 256, (shape[1] // 4, shape[2] // 4, 3)).astype(np.float32)
  frame = np.kron(frame, np.ones((4, 4, 1), np.float32))
  return np.stack([frame] * shape[0])


@pytest.mark.parametrize("name", on_device.OP_NAMES)
def test_randaugment_ops_compute_what_the_host_s_compute(name):
  """Same op, same level and sign, same pixels (to float rounding)."""
  clip = texture()
  for level, sign in ((0.7, 1.0), (0.35, -1.0), (1.0, 1.0)):
    host = transforms.RANDAUGMENT_OPS[name](tf.constant(clip), tf.constant(level),
                                             tf.constant(sign)).numpy()
    device = np.asarray(jax.jit(on_device.randaugment_op(name))(jnp.asarray(clip), level, sign))
    np.testing.assert_allclose(device, host, atol=2e-3, err_msg=f"{name} {level} {sign}")


def test_hue_rotation_is_tensorflow_s():
  rgb = np.random.default_rng(1).integers(0, 256, (1, 500, 3)).astype(np.float32)
  rgb[0, :5] = [[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0], [0, 0, 255]]  # grays, pure
  for delta in (-0.1, 0.03, 0.25, 0.5):
    want = tf.image.adjust_hue(rgb / 255.0, delta).numpy() * 255.0
    np.testing.assert_allclose(on_device.adjust_hue(jnp.asarray(rgb), delta), want, atol=1e-2)


def test_device_randaugment_draws_like_the_host_s():
  """One layer on many clips: as often left alone, and as strong on average, on both sides; the
  same ops on every frame; the same key gives the same clip."""
  clip = texture((2, 24, 20))
  n = 300
  device = np.asarray(jax.jit(jax.vmap(lambda k: on_device.randaugment(k, clip, 1, 7.0)))(
      jax.random.split(jax.random.key(0), n)))
  host_layer = tf.function(lambda key: transforms.randaugment(tf.constant(clip), key, 1, 7.0))
  host = np.stack([host_layer(tf.constant([i, 5], tf.int64)).numpy() for i in range(n)])
  for out in (device, host):
    np.testing.assert_array_equal(out[:, 1], out[:, 0])
  change = lambda out: np.abs(out - clip).mean(axis=(1, 2, 3, 4))
  unchanged = [np.mean(change(out) < 1e-3) for out in (device, host)]
  assert 0.4 < unchanged[0] < 0.65 and abs(unchanged[0] - unchanged[1]) < 0.1, unchanged
  strength = [change(out).mean() for out in (device, host)]
  assert abs(strength[0] - strength[1]) < 0.2 * strength[1], strength
  again = on_device.randaugment(jax.random.split(jax.random.key(0), n)[7], clip, 1, 7.0)
  np.testing.assert_allclose(again, device[7], atol=1e-4)


def test_color_jitter_keeps_frames_together_and_its_strength():
  clip = texture()
  np.testing.assert_allclose(on_device.color_jitter(jax.random.key(0), clip, 0.0), clip,
                             atol=1e-3)
  outs = np.asarray(jax.jit(jax.vmap(lambda k: on_device.color_jitter(k, clip, 0.4)))(
      jax.random.split(jax.random.key(1), 50)))
  np.testing.assert_allclose(outs[:, 1], outs[:, 0], atol=1e-4)
  device = np.abs(outs - clip).mean()
  host = np.mean([np.abs(transforms.color_jitter(tf.constant(clip), tf.constant([i, 2], tf.int64),
                                                 0.4).numpy() - clip).mean() for i in range(50)])
  assert abs(device - host) < 0.25 * host, (device, host)


def test_host_augment_moves_randaugment_and_jitter_between_host_and_device():
  video = jnp.asarray(np.stack([texture((2, 16, 16), seed=i) for i in range(4)]), jnp.uint8)
  key = jax.random.key(4)
  augment = dict(randaugment_layers=2, randaugment_magnitude=9.0, color_jitter=0.4)
  plain = on_device.eval_clips(data_config(), video)
  on_host = on_device.train_clips(data_config(host_augment=True, **augment), video, key)
  np.testing.assert_allclose(on_host, plain, atol=1e-5)  # the host did them already
  here = jax.jit(lambda v: on_device.train_clips(data_config(**augment), v, key))(video)
  assert np.abs(np.asarray(here) - np.asarray(plain)).max() > 0.1
  np.testing.assert_allclose(on_device.train_clips(data_config(**augment), video[:2], key),
                             here[:2], atol=1e-4)  # clip i draws from (key, i) alone
