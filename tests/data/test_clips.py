"""Tests of what a record becomes (vidtx.data.clips): sampling end to end, train augmentation,
multi-view eval."""

import numpy as np
import pytest
import tensorflow as tf

from vidtx import configuration
from vidtx.data import clips, records, synthetic, transforms

def make_config(**overrides):
  cfg = configuration.base().data
  cfg.update(dict(name="test", num_frames=4, frame_stride=1, min_resize=36, crop_size=32,
                  shuffle_buffer=8,
                  synthetic=dict(num_train=24, num_val=10, num_shards=3)))
  cfg.update(overrides)
  return cfg


def gray_clip(num_frames, size=24, start=0):
  """Frame i is uniformly gray with value 20 * (start + i): the pixels tell the frame index."""
  values = 20 * (start + np.arange(num_frames, dtype=np.uint8))
  return np.broadcast_to(values[:, None, None, None], (num_frames, size, size, 3)).copy()


def frame_indices(video, start=0):
  """Inverse of gray_clip: the frame index of every output frame."""
  return np.round(video[..., 0].mean(axis=(-1, -2)) / 20).astype(int) - start


def record_of(frames, label=0):
  return synthetic.make_sequence_example(frames, label).SerializeToString()


def train_clips(cfg, record, key, flip_table=None):
  video, label = clips.train_example(cfg, record, tf.constant(key, tf.int64), flip_table)
  return video.numpy(), label.numpy()


def eval_views(cfg, record):
  video, label = clips.eval_example(cfg, record)
  return video.numpy(), int(label)


# --- sampling, end to end ----------------------------------------------------------------------


def test_pipeline_returns_the_sampled_frames():
  """The gray level of each output frame tells which stored frame it came from."""
  record = record_of(gray_clip(12))
  cfg = make_config(num_frames=4, frame_stride=2)
  video, _ = eval_views(cfg, record)
  assert video.shape == (1, 4, 32, 32, 3)
  assert frame_indices(video[0]).tolist() == [2, 4, 6, 8]  # centred: offset (12 - 7) // 2
  starts = set()
  for i in range(30):
    video, labels = train_clips(cfg, record, [i, 0])
    assert video.shape == (1, 4, 32, 32, 3) and labels.tolist() == [0]
    idx = frame_indices(video[0])
    np.testing.assert_array_equal(np.diff(idx), 2)
    starts.add(int(idx[0]))
  assert starts == set(range(6))  # offsets 0..12-7
  video, _ = eval_views(make_config(num_frames=5), record_of(gray_clip(3)))
  assert frame_indices(video[0]).tolist() == [0, 1, 2, 0, 1]  # short: loops
  segment = make_config(num_frames=4, sampler="segment")
  assert frame_indices(eval_views(segment, record)[0][0]).tolist() == [1, 4, 7, 10]
  # 3 frames in 4 segments: middles at 0.375, 1.125, 1.875, 2.625.
  assert frame_indices(eval_views(segment, record_of(gray_clip(3)))[0][0]).tolist() == [0, 1, 1,
                                                                                        2]


def test_only_sampled_frames_are_decoded():
  good = synthetic.make_sequence_example(gray_clip(1), 0).feature_lists.feature_list[
      records.FRAMES_KEY].feature[0].bytes_list.value[0]
  frames = [good if 3 <= i <= 6 else b"not a jpeg" for i in range(10)]
  # The eval window of 4 out of 10 frames is 3..6; decoding any other frame would fail.
  video, label = eval_views(make_config(num_frames=4), records.make_example(frames, 5)
                            .SerializeToString())
  assert video.shape == (1, 4, 32, 32, 3) and label == 5
  with pytest.raises(tf.errors.InvalidArgumentError):
    transforms.decode_frames(tf.constant(frames))


def test_clips_leave_the_host_as_uint8_pixels():
  """Not normalised: that happens on the device (vidtx.data.on_device)."""
  frames = np.zeros((4, 24, 24, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
  video, _ = eval_views(make_config(), record_of(frames))
  assert video.shape == (1, 4, 32, 32, 3) and video.dtype == np.uint8
  np.testing.assert_allclose(video, np.broadcast_to([200, 100, 50], video.shape), atol=2)
  video, _ = train_clips(make_config(randaugment_layers=2, random_erasing=1.0), record_of(frames),
                         [0, 0])
  assert video.dtype == np.uint8 and video.shape == (1, 4, 32, 32, 3)


# --- train augmentation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texture():
  """A textured still image stored at 36 x 36, and its decoded pixels."""
  image = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
  decoded = tf.io.decode_jpeg(records.encode_jpeg(image, synthetic.JPEG_QUALITY, full_chroma=True))
  return image, decoded.numpy()


@pytest.mark.parametrize("flip", ["none", "random"])
def test_crop_and_flip_are_the_same_for_all_frames(texture, flip):
  image, full = texture
  record = record_of(np.stack([image] * 6))
  windows = {(t, l, f): (full[:, ::-1] if f else full)[t:t + 32, l:l + 32]
             for t in range(5) for l in range(5) for f in [False, True]}
  cfg = make_config(num_frames=4, flip=flip)
  seen = set()
  for i in range(16):
    video = train_clips(cfg, record, [i, 3])[0][0]
    for frame in video[1:]:
      np.testing.assert_array_equal(frame, video[0])
    match = [k for k, w in windows.items() if np.array_equal(video[0], w)]
    assert match, "the output is not a crop of the input"
    seen.add(match[0])
  assert len({m[:2] for m in seen}) > 3  # crops are random
  assert {m[2] for m in seen} == ({False, True} if flip == "random" else {False})
  centre = eval_views(cfg, record)[0][0]
  np.testing.assert_array_equal(centre[0], windows[(2, 2, False)])


def test_scale_jitter_draws_the_short_side():
  """A horizontal ramp of 7 levels per pixel, 36 wide: resized to short side s, a crop's slope is
  7 * 36 / s levels per pixel, which tells s."""
  ramp = np.broadcast_to((7 * np.arange(36, dtype=np.uint8))[None, None, :, None], (4, 36, 36, 3))
  record = record_of(ramp.copy())

  def short_sides(cfg):
    sides = []
    for i in range(12):
      video = train_clips(cfg, record, [i, 1])[0][0]
      pixels = video[0, 8:24, 8:24, 1].astype(float)
      slope = np.median((pixels[:, -1] - pixels[:, 0]) / 15)  # over 15 pixels: rounding is small
      sides.append(7 * 36 / slope)
    return np.array(sides)

  np.testing.assert_allclose(short_sides(make_config(min_resize=36)), 36, rtol=0.03)
  sides = short_sides(make_config(min_resize=36, max_resize=72))
  assert sides.min() > 35 and sides.max() < 74 and np.ptp(sides) > 12


ALL_AUGMENTATIONS = dict(
    num_frames=4, sampler="segment", train_crop="random_resized", flip="swap_labels",
    randaugment_layers=4, randaugment_magnitude=9.0, color_jitter=0.4, random_erasing=1.0,
    repeated_aug=2, host_augment=True)


def test_every_augmentation_keeps_identical_frames_identical(texture):
  image, _ = texture
  record = record_of(np.stack([image] * 7), label=0)
  cfg = make_config(**ALL_AUGMENTATIONS)
  table = transforms.flip_table(["push_left", "push_right"])
  augment = tf.function(lambda key: clips.train_example(cfg, record, key, table))  # traced once
  labels = set()
  for i in range(6):
    video, label = [x.numpy() for x in augment(tf.constant([i, 9], tf.int64))]
    assert video.shape == (2, 4, 32, 32, 3) and np.isfinite(video).all()
    for clip in video:
      for frame in clip[1:]:
        np.testing.assert_array_equal(frame, clip[0])
    assert not np.allclose(video[0], video[1])  # the copies are augmented independently
    labels.update(label.tolist())
  assert labels == {0, 1}  # flips swap push_left <-> push_right


# --- multi-view evaluation -----------------------------------------------------------------------


def test_eval_views_are_clips_times_crops():
  """Frame index in the red channel, column in the green one: each view tells its clip and crop."""
  clip = np.zeros((20, 24, 40, 3), np.uint8)
  clip[..., 0] = 10 * np.arange(20)[:, None, None]
  clip[..., 1] = 6 * np.arange(40)[None, None, :]
  cfg = make_config(num_frames=4, frame_stride=2, crop_size=16, eval_resize=24, eval_clips=3,
                    eval_crops=3)
  video, _ = eval_views(cfg, record_of(clip))
  assert video.shape == (9, 4, 16, 16, 3)
  red = video[..., 0].mean(axis=(-1, -2)) / 10
  green = video[..., 1].mean(axis=(1, 2, 3)) / 6
  # Clips start at 0, 6 and 13 (max start 20 - 7 = 13); crops at columns 0, 12 and 24.
  starts = np.round(red[:, 0]).astype(int).reshape(3, 3)
  np.testing.assert_array_equal(starts, [[0] * 3, [6] * 3, [13] * 3])
  np.testing.assert_allclose(green.reshape(3, 3), [[7.5, 19.5, 31.5]] * 3, atol=0.6)
  assert clips.centre_view(cfg) == 4
  assert clips.centre_view(make_config(eval_clips=2, eval_crops=3)) == 1
  # Eval crops larger than the train crop (fully convolutional models): 24 wide, at columns 0,
  # 8 and 16.
  cfg.eval_crop_size = 24
  video, _ = eval_views(cfg, record_of(clip))
  assert video.shape == (9, 4, 24, 24, 3)
  green = video[..., 1].mean(axis=(1, 2, 3)) / 6
  np.testing.assert_allclose(green.reshape(3, 3), [[11.5, 19.5, 27.5]] * 3, atol=0.6)
