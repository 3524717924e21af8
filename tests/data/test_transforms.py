"""Tests of the per-clip transforms: samplers, crops, flips, RandAugment, colour jitter, rounding
to uint8; each on a known input, and every one keeps the frames of a clip consistent."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from vidtx.data import transforms

def key(i, j=0):
  return tf.constant([i, j], tf.int64)


def image(seed=0, shape=(24, 20)):
  return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def still_clip(frame, num_frames=3):
  """A clip of identical frames, float32 [T, H, W, 3]."""
  return tf.constant(np.stack([frame] * num_frames).astype(np.float32))


def assert_frames_identical(clip):
  clip = np.asarray(clip)
  for frame in clip[1:]:
    np.testing.assert_array_equal(frame, clip[0])


# --- samplers ----------------------------------------------------------------------------------


def test_dense_train_covers_the_valid_starts_with_stride():
  starts = set()
  for i in range(150):  # 20 frames, a window of 4 frames 3 apart spans 10: starts 0..10
    idx = transforms.dense_indices(20, 4, 3, key=key(i, 7)).numpy()
    np.testing.assert_array_equal(np.diff(idx), 3)
    starts.add(int(idx[0]))
  assert starts == set(range(11))
  for i in range(20):  # exactly the window: one possible start
    assert transforms.dense_indices(10, 4, 3, key=key(i)).numpy().tolist() == [0, 3, 6, 9]


def test_dense_eval_clips():
  d = transforms.dense_indices
  assert d(20, 4, 3).numpy().tolist() == [[5, 8, 11, 14]]  # centred: start 10 // 2
  assert d(11, 4, 1).numpy().tolist() == [[3, 4, 5, 6]]
  assert d(8, 8, 1).numpy().tolist() == [list(range(8))]
  # Starts evenly spaced from 0 to max_start = 10, rounded down: 0, 3, 6, 10.
  assert d(20, 4, 3, num_clips=4).numpy()[:, 0].tolist() == [0, 3, 6, 10]
  assert d(20, 4, 3, num_clips=3).numpy().tolist() == [[0, 3, 6, 9], [5, 8, 11, 14],
                                                        [10, 13, 16, 19]]
  assert d(10, 4, 3, num_clips=2).numpy().tolist() == [[0, 3, 6, 9]] * 2  # exactly the window


def test_dense_short_video_loops():
  for k in [None, key(1, 2)]:
    want = [[0, 1, 2, 0, 1]] if k is None else [0, 1, 2, 0, 1]
    assert transforms.dense_indices(3, 5, 1, key=k).numpy().tolist() == want
  assert transforms.dense_indices(4, 3, 2, num_clips=2).numpy().tolist() == [[0, 2, 0]] * 2


def test_segment_eval_takes_the_middle_of_each_segment():
  s = transforms.segment_indices
  # 10 frames, 4 segments of 2.5: middles at 1.25, 3.75, 6.25, 8.75 (TSN's int(tick/2 + tick i)).
  assert s(10, 4).numpy().tolist() == [[1, 3, 6, 8]]
  assert s(8, 8).numpy().tolist() == [list(range(8))]  # as many frames as segments
  assert s(3, 5).numpy().tolist() == [[0, 0, 1, 2, 2]]  # fewer frames: repeats
  # Two views: a quarter and three quarters into every segment.
  assert s(10, 4, num_clips=2).numpy().tolist() == [[0, 3, 5, 8], [1, 4, 6, 9]]
  assert s(12, 4, num_clips=3).numpy().tolist() == [[0, 3, 6, 9], [1, 4, 7, 10],
                                                     [2, 5, 8, 11]]


def test_segment_train_takes_a_random_frame_of_each_segment():
  seen = np.zeros((4, 10), bool)
  for i in range(200):
    idx = transforms.segment_indices(10, 4, key=key(i)).numpy()
    seen[np.arange(4), idx] = True
  # Segment i is [2.5 i, 2.5 (i + 1)): frames 0-2, 2-4, 5-7 and, the last one, 7-9.
  assert [np.flatnonzero(row).tolist() for row in seen] == [[0, 1, 2], [2, 3, 4], [5, 6, 7],
                                                            [7, 8, 9]]
  for i in range(10):
    assert transforms.segment_indices(6, 6, key=key(i)).numpy().tolist() == list(range(6))
    assert transforms.segment_indices(2, 4, key=key(i)).numpy().tolist() == [0, 0, 1, 1]


def test_a_video_without_frames_is_an_error():
  with pytest.raises(tf.errors.InvalidArgumentError, match="A video has no frames"):
    transforms.segment_indices(0, 4)


# --- resizing, crops, flips, normalisation -------------------------------------------------------


def test_resize_short_side():
  assert transforms.resize_short_side(tf.zeros([2, 24, 48, 3], tf.uint8), 36).shape == (2, 36,
                                                                                          72, 3)
  assert transforms.resize_short_side(tf.zeros([1, 50, 30, 3]), 36).shape == (1, 60, 36, 3)
  same = np.random.default_rng(0).integers(0, 255, (2, 36, 40, 3), dtype=np.uint8)
  out = transforms.resize_short_side(tf.constant(same), 36)
  assert out.dtype == tf.float32
  np.testing.assert_array_equal(out.numpy(), same)  # already the right size: untouched


def test_to_uint8_rounds_and_clips():
  out = transforms.to_uint8(tf.constant([[-3.0, 0.4, 0.6, 127.5, 254.6, 300.0]]))
  assert out.dtype == tf.uint8
  np.testing.assert_array_equal(out, [[0, 0, 1, 128, 255, 255]])


def test_spatial_crops_positions():
  # Pixel value = column (landscape 16 x 40) or row (portrait 40 x 16).
  landscape = tf.constant(np.broadcast_to(np.arange(40.0)[None, None, :, None], (2, 16, 40, 3)))
  crops = transforms.spatial_crops(landscape, 16, 3).numpy()
  assert crops.shape == (3, 2, 16, 16, 3)
  assert [c[0, 0, :, 0].tolist() for c in crops] == [list(range(0, 16)), list(range(12, 28)),
                                                     list(range(24, 40))]
  portrait = tf.transpose(landscape, [0, 2, 1, 3])
  crops = transforms.spatial_crops(portrait, 16, 3).numpy()
  assert [c[0, :, 0, 0].tolist() for c in crops] == [list(range(0, 16)), list(range(12, 28)),
                                                     list(range(24, 40))]
  centre = transforms.spatial_crops(landscape[:, :, :20], 8, 1).numpy()  # 16 x 20 -> rows 4..11
  assert centre.shape == (1, 2, 8, 8, 3) and centre[0, 0, 0, :, 0].tolist() == list(range(6, 14))
  np.testing.assert_array_equal(transforms.center_crop(landscape[:, :, :20], 8), centre[0])


def test_random_crop_is_one_window_for_all_frames():
  frame = image(0, (12, 12))
  seen = set()
  for i in range(40):
    out = transforms.random_crop(still_clip(frame), 8, key(i)).numpy()
    assert_frames_identical(out)
    where = [(t, l) for t in range(5) for l in range(5)
             if np.array_equal(out[0], frame[t:t + 8, l:l + 8])]
    assert len(where) == 1
    seen.add(where[0])
  assert len(seen) > 10


def test_random_resized_box_ranges():
  for i in range(100):
    top, left, h, w = [int(v) for v in transforms.random_resized_box(
        60, 80, key(i), (0.08, 1.0), (0.75, 4 / 3))]
    assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
    assert 0.08 * 4800 * 0.9 <= h * w <= 4800
    assert 0.75 * 0.85 <= w / h <= 4 / 3 * 1.15  # the rounding of small boxes


def test_random_resized_box_falls_back_to_the_centre_with_a_clamped_ratio():
  # A 10 x 100 strip: no box of >= 90% of the area has a ratio in [3/4, 4/3].
  box = transforms.random_resized_box(10, 100, key(3), (0.9, 1.0), (0.75, 4 / 3))
  assert [int(v) for v in box] == [0, (100 - 13) // 2, 10, 13]  # width round(10 * 4/3)
  box = transforms.random_resized_box(40, 40, key(3), (1.0, 1.0), (1.0, 1.0))
  assert [int(v) for v in box] == [0, 0, 40, 40]  # exactly the frame fits


def test_random_resized_crop_is_the_box_resized():
  frame = image(1, (30, 40))
  clip = still_clip(frame)
  for i in range(5):
    out = transforms.random_resized_crop(clip, 16, key(i), (0.08, 1.0), (0.75, 4 / 3))
    assert out.shape == (3, 16, 16, 3)
    assert_frames_identical(out)
    top, left, h, w = [int(v) for v in transforms.random_resized_box(30, 40, key(i), (0.08, 1.0),
                                                                      (0.75, 4 / 3))]
    want = tf.image.resize(frame[top:top + h, left:left + w].astype(np.float32), [16, 16])
    np.testing.assert_allclose(out[0], want, atol=1e-3)


def test_flip_reverses_columns():
  clip = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(transforms.flip(clip), clip[:, :, ::-1])


SSV2_LIKE = ["Pushing something from left to right", "Pushing something from right to left",
             "Plugging something into something but pulling it right out as you remove your "
             "hand", "Holding something", "move_left", "move_RIGHT", "Leftovers on the left"]


def test_flip_table_pairs_left_and_right():
  # Pairs swap; no left/right word: unchanged; a left/right word without a partner: -1.
  assert transforms.flip_table(SSV2_LIKE) == [1, 0, -1, 3, 5, 4, -1]
  with pytest.raises(ValueError, match="repeat"):
    transforms.flip_table(["a", "A"])


def test_random_flip_relabels_pairs_and_never_flips_unpaired_classes():
  table = transforms.flip_table(SSV2_LIKE)
  clip = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32))
  outcomes = {}
  for label in range(len(SSV2_LIKE)):
    for i in range(16):
      out, new_label = transforms.random_flip(clip, tf.constant(label), key(i), table)
      flipped = np.array_equal(out, clip.numpy()[:, :, ::-1])
      assert flipped or np.array_equal(out, clip)
      want = table[label] if flipped else label
      assert int(new_label) == want
      outcomes.setdefault(label, set()).add(flipped)
  assert outcomes == {0: {False, True}, 1: {False, True}, 2: {False}, 3: {False, True},
                      4: {False, True}, 5: {False, True}, 6: {False}}
  flips = {bool(np.array_equal(transforms.random_flip(clip, 2, key(i))[0], clip.numpy()[:, :, ::-1]))
           for i in range(16)}
  assert flips == {False, True}  # without a table every class flips


# --- RandAugment ---------------------------------------------------------------------------------


def pil_reference(op, frame):
  """The same op done by PIL on a uint8 image, at level 0.7 (timm's argument mapping)."""
  pil = Image.fromarray(frame)
  return np.asarray({
      "AutoContrast": lambda: ImageOps.autocontrast(pil),
      "Equalize": lambda: ImageOps.equalize(pil),
      "Invert": lambda: ImageOps.invert(pil),
      "Posterize": lambda: ImageOps.posterize(pil, 4 - int(0.7 * 4)),
      "Solarize": lambda: ImageOps.solarize(pil, 256 - int(0.7 * 256)),
      "Color": lambda: ImageEnhance.Color(pil).enhance(1.63),
      "Contrast": lambda: ImageEnhance.Contrast(pil).enhance(1.63),
      "Brightness": lambda: ImageEnhance.Brightness(pil).enhance(1.63),
      "Sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(1.63),
  }[op]()).astype(np.float32)


@pytest.mark.parametrize("op, atol", [("AutoContrast", 1), ("Equalize", 0), ("Invert", 0),
                                      ("Posterize", 0), ("Solarize", 0), ("Color", 1),
                                      ("Contrast", 2), ("Brightness", 1), ("Sharpness", 1)])
def test_pixel_ops_match_pil(op, atol):
  frame = image(5, (20, 24)) // 2 + 40  # a narrower range, so AutoContrast has work to do
  out = transforms.RANDAUGMENT_OPS[op](still_clip(frame, 1), tf.constant(0.7),
                                       tf.constant(1.0)).numpy()[0]
  np.testing.assert_allclose(out, pil_reference(op, frame), atol=atol + 0.5)


def test_solarize_add_and_posterize_numbers():
  x = tf.constant([[[[100.0, 130.0, 250.0]]]])
  out = transforms.RANDAUGMENT_OPS["SolarizeAdd"](x, tf.constant(0.5), 1.0)
  assert out.numpy().ravel().tolist() == [155.0, 130.0, 250.0]  # +55 below 128 only
  out = transforms.RANDAUGMENT_OPS["Posterize"](x, tf.constant(0.7), 1.0)  # keep 2 bits
  assert out.numpy().ravel().tolist() == [64.0, 128.0, 192.0]


def coordinates(h=16, w=20):
  """Channel 0 = column * 10, channel 1 = row * 10."""
  x = np.zeros((1, h, w, 3), np.float32)
  x[..., 0] = np.arange(w)[None, :] * 10
  x[..., 1] = np.arange(h)[:, None] * 10
  return tf.constant(x)


def test_geometric_ops_move_pixels_as_stated():
  x = coordinates()
  ops = transforms.RANDAUGMENT_OPS
  # TranslateX at level 1/9 of 45% of 20 columns = 1 column: output column c shows c + sign.
  for sign in [1.0, -1.0]:
    out = ops["TranslateX"](x, tf.constant(1 / 9), sign).numpy()[0]
    src = np.arange(20) + int(sign)
    inside = (src >= 0) & (src < 20)
    np.testing.assert_allclose(out[:, inside, 0], x.numpy()[0][:, src[inside], 0], atol=1e-3)
    assert (out[:, ~inside] == 128).all()  # filled with gray
  out = ops["TranslateY"](x, tf.constant(2 / (0.45 * 16)), 1.0).numpy()[0]
  np.testing.assert_allclose(out[:14, :, 1], x.numpy()[0][2:, :, 1], atol=1e-3)  # 2 rows up
  # ShearX 0.3 * level = 0.25: row r shifts by r / 4 columns.
  out = ops["ShearX"](x, tf.constant(0.25 / 0.3), 1.0).numpy()[0]
  np.testing.assert_allclose(out[8, :15, 0], (np.arange(15) + 2) * 10, atol=1e-3)
  np.testing.assert_allclose(out[:, :14, 1], x.numpy()[0][:, :14, 1], atol=1e-3)  # rows stay
  out = ops["ShearY"](x, tf.constant(0.25 / 0.3), 1.0).numpy()[0]
  np.testing.assert_allclose(out[:11, 4, 1], (np.arange(11) + 1) * 10, atol=1e-3)
  # Rotate 30 degrees about the centre: a dot at radius 5 lands at radius 5, 30 degrees away.
  dot = np.zeros((1, 21, 21, 3), np.float32)
  dot[0, 10, 15] = 255
  for sign in [1.0, -1.0]:
    out = ops["Rotate"](tf.constant(dot), tf.constant(1.0), sign).numpy()[0, ..., 0]
    near = np.hypot(*np.mgrid[-10:11, -10:11]) < 9  # inside the frame: no gray fill
    rows, cols = np.nonzero(near & (out > 1))
    weights = out[rows, cols]
    y, x_ = np.average(rows, weights=weights) - 10, np.average(cols, weights=weights) - 10
    assert math.hypot(x_, y) == pytest.approx(5, abs=0.2)
    assert abs(math.degrees(math.atan2(y, x_))) == pytest.approx(30, abs=2)
  for name in ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"]:
    np.testing.assert_allclose(ops[name](x, tf.constant(0.0), 1.0), x, atol=1e-4)


def test_every_randaugment_op_keeps_identical_frames_identical():
  clip = still_clip(image(2, (16, 16)), 4)
  for name, op in transforms.RANDAUGMENT_OPS.items():
    for sign in [1.0, -1.0]:
      out = op(clip, tf.constant(0.8), tf.constant(sign))
      assert out.shape == clip.shape, name
      assert_frames_identical(out)


def test_randaugment_applies_ops_and_is_seeded():
  clip = still_clip(image(3, (16, 16)), 2)
  changed = 0
  for i in range(20):
    out = transforms.randaugment(clip, key(i), num_layers=2, magnitude=9.0).numpy()
    np.testing.assert_array_equal(out, transforms.randaugment(clip, key(i), 2, 9.0))
    assert_frames_identical(out)
    assert out.min() >= 0 and out.max() <= 255
    changed += not np.allclose(out, clip)
  assert 10 <= changed <= 19  # each of 2 layers applies with p = 1/2: about 3/4 change
  np.testing.assert_array_equal(transforms.randaugment(clip, key(0), 0, 9.0), clip)


# --- colour jitter, random erasing --------------------------------------------------------------


def test_color_jitter_on_gray_only_scales_brightness():
  """Contrast, saturation and hue leave a uniform gray clip alone; brightness scales it."""
  gray = tf.fill([2, 4, 4, 3], 100.0)
  factors = []
  for i in range(40):
    out = transforms.color_jitter(gray, key(i), 0.4).numpy()
    assert np.ptp(out) < 1e-3  # still uniform gray, on every frame
    factors.append(out[0, 0, 0, 0] / 100)
  assert 0.6 <= min(factors) < 0.7 and 1.3 < max(factors) <= 1.4


def test_color_jitter_keeps_identical_frames_identical():
  clip = still_clip(image(4, (8, 8)), 3)
  out = transforms.color_jitter(clip, key(1), 0.8)
  assert_frames_identical(out)
  assert not np.allclose(out, clip)
