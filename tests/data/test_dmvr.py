"""Tests of the DMVR TFRecord pipeline: frame sampling, transforms, eval passes, train resume."""

import numpy as np
import pytest
import tensorflow as tf

from vidtx import configuration, data
from vidtx.data import dmvr
from vidtx.data import synthetic

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def make_config(**overrides):
  cfg = configuration.base().data
  cfg.update(dict(name="test", num_frames=4, frame_stride=1, min_resize=36, crop_size=32,
                  mean=tuple(MEAN), std=tuple(STD), shuffle_buffer=8,
                  synthetic=dict(num_train=24, num_val=10, num_shards=3)))
  cfg.update(overrides)
  return cfg


def gray_clip(num_frames, size=24, start=0):
  """Frame i is uniformly gray with value 20 * (start + i): the pixels tell the frame index."""
  values = 20 * (start + np.arange(num_frames, dtype=np.uint8))
  return np.broadcast_to(values[:, None, None, None], (num_frames, size, size, 3)).copy()


def frame_indices(video, start=0):
  """Inverse of gray_clip after normalisation: the frame index of every output frame."""
  pixels = (video[..., 0].mean(axis=(-1, -2)) * STD[0] + MEAN[0]) * 255
  return np.round(pixels / 20).astype(int) - start


def write_split(data_dir, split, shard_sizes, num_frames=12):
  """Shards of gray clips whose labels are their global index 0..N-1 (unique ids)."""
  label = 0
  for k, n in enumerate(shard_sizes):
    examples = []
    for _ in range(n):
      examples.append(synthetic.make_sequence_example(gray_clip(num_frames), label))
      label += 1
    synthetic.write_records(
        str(data_dir / f"{split}-{k:05d}-of-{len(shard_sizes):05d}.tfrecord"), examples)
  return label


def process(cfg, record, key=None):
  if key is not None:
    key = tf.constant(key, tf.int64)
  video, label = dmvr.process_example(cfg, record, key)
  return video.numpy(), int(label)


def record_of(frames, label=0):
  return synthetic.make_sequence_example(frames, label).SerializeToString()


# --- frame sampling --------------------------------------------------------------------------


def test_train_indices_cover_the_valid_offsets_with_stride():
  n, num_frames, stride = 20, 4, 3  # the window spans 10 frames: offsets 0..10
  starts = set()
  for i in range(300):
    idx = dmvr.sample_indices(n, num_frames, stride, key=tf.constant([i, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(np.diff(idx), stride)
    starts.add(int(idx[0]))
  assert starts == set(range(11))


def test_eval_indices_are_centred():
  assert dmvr.sample_indices(20, 4, 3).numpy().tolist() == [5, 8, 11, 14]
  assert dmvr.sample_indices(10, 4, 1).numpy().tolist() == [3, 4, 5, 6]
  assert dmvr.sample_indices(11, 4, 1).numpy().tolist() == [3, 4, 5, 6]
  assert dmvr.sample_indices(8, 8, 1).numpy().tolist() == list(range(8))


def test_short_video_loops():
  key = tf.constant([1, 2], tf.int64)
  for k in [None, key]:
    assert dmvr.sample_indices(3, 5, 1, key=k).numpy().tolist() == [0, 1, 2, 0, 1]
    assert dmvr.sample_indices(4, 3, 2, key=k).numpy().tolist() == [0, 2, 0]


def test_pipeline_returns_the_sampled_frames():
  """End to end: the gray level of each output frame tells which stored frame it came from."""
  record = record_of(gray_clip(12))
  cfg = make_config(num_frames=4, frame_stride=2)
  video, _ = process(cfg, record)
  assert frame_indices(video).tolist() == [2, 4, 6, 8]  # centred: offset (12 - 7) // 2
  starts = set()
  for i in range(60):
    idx = frame_indices(process(cfg, record, key=[i, 0])[0])
    np.testing.assert_array_equal(np.diff(idx), 2)
    starts.add(int(idx[0]))
  assert starts == set(range(6))  # offsets 0..12-7
  video, _ = process(make_config(num_frames=5), record_of(gray_clip(3)))
  assert frame_indices(video).tolist() == [0, 1, 2, 0, 1]


def test_only_sampled_frames_are_decoded():
  frames = [synthetic.make_sequence_example(gray_clip(1), 0).feature_lists
            .feature_list["image/encoded"].feature[0].bytes_list.value[0]] * 10
  frames = [f if 3 <= i <= 6 else b"not a jpeg" for i, f in enumerate(frames)]
  ex = tf.train.SequenceExample()
  ex.context.feature["clip/label/index"].int64_list.value.append(5)
  for f in frames:
    ex.feature_lists.feature_list["image/encoded"].feature.add().bytes_list.value.append(f)
  # The eval window of 4 out of 10 frames is 3..6; decoding any other frame would fail.
  video, label = process(make_config(num_frames=4), ex.SerializeToString())
  assert video.shape == (4, 32, 32, 3) and label == 5
  with pytest.raises(tf.errors.InvalidArgumentError):
    dmvr.decode_frames(tf.constant(frames))


# --- transforms ------------------------------------------------------------------------------


def test_normalisation_numbers():
  frames = np.zeros((4, 24, 24, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
  video, _ = process(make_config(), record_of(frames))
  assert video.shape == (4, 32, 32, 3) and video.dtype == np.float32
  want = (np.array([200, 100, 50]) / 255 - MEAN) / STD
  np.testing.assert_allclose(video, np.broadcast_to(want, video.shape), atol=2 / 255 / 0.224)
  np.testing.assert_allclose(dmvr.normalize(tf.constant([[255.0, 0.0, 51.0]]), MEAN, STD),
                             [[(1 - 0.485) / 0.229, -0.456 / 0.224, (0.2 - 0.406) / 0.225]],
                             rtol=1e-6)


def test_resize_short_side():
  frames = tf.zeros([2, 24, 48, 3], tf.uint8)
  assert dmvr.resize_short_side(frames, 36).shape == (2, 36, 72, 3)
  assert dmvr.resize_short_side(tf.zeros([1, 50, 30, 3], tf.uint8), 36).shape == (1, 60, 36, 3)
  same = np.random.default_rng(0).integers(0, 255, (2, 36, 40, 3), dtype=np.uint8)
  out = dmvr.resize_short_side(tf.constant(same), 36)
  assert out.dtype == tf.float32
  np.testing.assert_array_equal(out.numpy(), same)  # already the right size: untouched


@pytest.mark.parametrize("flip", [False, True])
def test_crop_and_flip_are_the_same_for_all_frames(flip):
  # A textured still image, stored at the resize size so the crop is the only change.
  texture = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
  record = record_of(np.stack([texture] * 6))
  decoded = tf.io.decode_jpeg(synthetic.make_sequence_example(texture[None], 0).feature_lists
                              .feature_list["image/encoded"].feature[0].bytes_list.value[0])
  full = (decoded.numpy() / 255 - MEAN) / STD
  windows = {(t, l, f): (full[:, ::-1] if f else full)[t:t + 32, l:l + 32]
             for t in range(5) for l in range(5) for f in [False, True]}
  cfg = make_config(num_frames=4, flip=flip)
  seen = set()
  for i in range(16):
    video, _ = process(cfg, record, key=[i, 3])
    for frame in video[1:]:
      np.testing.assert_array_equal(frame, video[0])
    match = [k for k, w in windows.items() if np.allclose(video[0], w, atol=1e-5)]
    assert match, "the output is not a crop of the input"
    seen.add(match[0])
  assert len({m[:2] for m in seen}) > 3  # crops are random
  assert {m[2] for m in seen} == ({False, True} if flip else {False})
  centre, _ = process(cfg, record)
  np.testing.assert_allclose(centre[0], windows[(2, 2, False)], atol=1e-5)


# --- eval passes -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def id_dataset(tmp_path_factory):
  """Gray clips with unique labels: 21 validation clips in 4 shards, 22 train clips in 3."""
  data_dir = tmp_path_factory.mktemp("ids")
  write_split(data_dir, "validation", [6, 5, 5, 5])
  write_split(data_dir, "train", [8, 7, 7])
  return str(data_dir)


def test_eval_covers_every_example_once_with_padding(id_dataset):
  cfg = make_config()
  batches = list(data.build(cfg, "validation", batch_size=4, seed=0, data_dir=id_dataset))
  assert len(batches) == 6
  for b in batches:
    assert b["video"].shape == (4, 4, 32, 32, 3) and b["video"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 21 + [0] * 3)
  labels = np.concatenate([b["label"] for b in batches])[:21]
  assert sorted(labels) == list(range(21))
  assert not batches[-1]["video"][1:].any()  # padding is zeros
  assert data.num_examples(cfg, "validation", id_dataset) == 21


def test_eval_two_hosts_cover_every_example_once(id_dataset):
  cfg = make_config()
  labels, num_batches = [], []
  for host in range(2):
    batches = list(data.build(cfg, "validation", batch_size=4, seed=0, process_index=host,
                              process_count=2, data_dir=id_dataset))
    num_batches.append(len(batches))
    for b in batches:
      labels += b["label"][b["mask"] > 0].tolist()
  assert num_batches == [3, 3]  # host 0 has 6 + 5 clips, host 1 has 5 + 5: same step count
  assert sorted(labels) == list(range(21))


def test_host_without_files_is_an_error(id_dataset):
  with pytest.raises(ValueError, match="Host 3 of 4 gets none of the 3 shard files"):
    data.build(make_config(), "train", batch_size=2, seed=0, process_index=3, process_count=4,
               data_dir=id_dataset)


def test_missing_data_dir_names_data_dir(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.data.data_dir") as e:
    data.build(make_config(), "validation", batch_size=2, seed=0, data_dir=missing)
  assert missing in str(e.value) and "validation-*-of-*" in str(e.value)
  with pytest.raises(ValueError, match="pass data_dir=prepare"):
    data.build(make_config(), "validation", batch_size=2, seed=0)


# --- train stream ----------------------------------------------------------------------------


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["video"], y["video"])


def train_stream(data_dir, cfg=None, **kwargs):
  kwargs = {"batch_size": 4, "seed": 0, **kwargs}
  return data.build(cfg or make_config(frame_stride=2), "train", data_dir=data_dir, **kwargs)


@pytest.fixture(scope="module")
def fresh_batches(id_dataset):
  """The first 14 batches of a fresh stream: 22 records, batch 4 -> 5 batches per epoch."""
  return take(train_stream(id_dataset), 14)


def test_train_epochs(fresh_batches):
  assert fresh_batches[0]["video"].shape == (4, 4, 32, 32, 3)
  assert fresh_batches[0]["label"].dtype == np.int32
  epochs = [np.concatenate([b["label"] for b in fresh_batches[e * 5:(e + 1) * 5]])
            for e in range(2)]
  for labels in epochs:
    assert len(set(labels)) == 20 and set(labels) <= set(range(22))  # no repeats in an epoch
  assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled every epoch
  assert epochs[0].tolist() != sorted(epochs[0])  # shuffled at all
  # Every example gets its own random window: stride 2, offsets 0..12-7.
  indices = np.concatenate([[frame_indices(v) for v in b["video"]] for b in fresh_batches])
  np.testing.assert_array_equal(np.diff(indices, axis=1), 2)
  assert set(indices[:, 0]) == set(range(6))


def test_train_stream_is_deterministic(id_dataset, fresh_batches):
  assert_same_batches(take(train_stream(id_dataset), 14), fresh_batches)
  other = take(train_stream(id_dataset, seed=1), 5)
  assert [b["label"].tolist() for b in other] != [b["label"].tolist() for b in
                                                   fresh_batches[:5]]


@pytest.mark.parametrize("start", [3, 4, 5, 12])
def test_resume_matches_skipping(id_dataset, fresh_batches, start):
  # 4 -> batches 4 and 5 straddle the first epoch boundary; 5 starts epoch 1; 12 is in epoch 2.
  resumed = take(train_stream(id_dataset, start_batch=start), 2)
  assert_same_batches(resumed, fresh_batches[start:start + 2])


def test_train_two_hosts_differ_and_augmentation_is_seeded(id_dataset):
  cfg = make_config(flip=True)
  a = take(train_stream(id_dataset, cfg, process_index=0, process_count=2), 2)
  b = take(train_stream(id_dataset, cfg, process_index=1, process_count=2), 2)
  # Host 0 reads shards 0 and 2 (labels 0-7, 15-21), host 1 shard 1 (labels 8-14).
  assert set(np.concatenate([x["label"] for x in a])) <= set(range(8)) | set(range(15, 22))
  assert set(np.concatenate([x["label"] for x in b])) <= set(range(8, 15))
  assert_same_batches(a, take(train_stream(id_dataset, cfg, process_index=0, process_count=2), 2))


def test_batch_larger_than_host_data_is_an_error(id_dataset):
  with pytest.raises(ValueError, match="only 22 training records, fewer than batch_size=32"):
    train_stream(id_dataset, batch_size=32)


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match=r"min_resize=36: must be at least config.data.crop_size=40"):
    data.build(make_config(crop_size=40), "train", batch_size=2, seed=0, data_dir="x")
  with pytest.raises(ValueError, match=r"config.data.frame_stride=0: must be at least 1"):
    data.build(make_config(frame_stride=0), "train", batch_size=2, seed=0, data_dir="x")
