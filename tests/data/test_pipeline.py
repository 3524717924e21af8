"""Tests of the tf.data pipeline (vidtx.data.pipeline): eval batches, hosts, corrupt records,
repeated augmentation, train determinism and resume, config checks."""

import json

import numpy as np
import pytest
import tensorflow as tf

from test_clips import frame_indices, gray_clip, make_config
from vidtx import data, errors
from vidtx.data import pipeline, records, synthetic


def write_split(data_dir, split, shard_sizes, num_frames=12, corrupt=()):
  """Shards of gray clips whose labels are their global index 0..N-1 (unique ids); the labels
  in `corrupt` get a record whose frames do not decode (even) or that has no frames (odd)."""
  label = 0
  for k, n in enumerate(shard_sizes):
    examples = []
    for _ in range(n):
      if label in corrupt:
        frames = [b"not a jpeg"] * num_frames if label % 2 == 0 else []
        examples.append(records.make_example(frames, label))
      else:
        examples.append(synthetic.make_sequence_example(gray_clip(num_frames), label))
      label += 1
    records.write_records(str(data_dir / records.shard_name(split, k, len(shard_sizes))), examples)
  return label


# --- datasets ------------------------------------------------------------------------------------


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
    assert not b["skipped"].any()
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 21 + [0] * 3)
  labels = np.concatenate([b["label"] for b in batches])[:21]
  assert sorted(labels) == list(range(21))
  assert not batches[-1]["video"][1:].any()  # padding is zeros
  assert data.num_examples(cfg, "validation", id_dataset) == 21


def test_multi_view_eval_batches(id_dataset):
  cfg = make_config(eval_clips=2, eval_crops=3)
  batches = list(data.build(cfg, "validation", batch_size=8, seed=0, data_dir=id_dataset))
  assert [b["video"].shape for b in batches] == [(8, 6, 4, 32, 32, 3)] * 3
  assert sum(b["mask"].sum() for b in batches) == 21


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


# --- corrupt records ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory):
  """12 train and 12 validation records in 2 shards; labels 2 and 8 do not decode, 5 has no
  frames."""
  data_dir = tmp_path_factory.mktemp("corrupt")
  for split in ("train", "validation"):
    write_split(data_dir, split, [6, 6], corrupt=(2, 5, 8))
  return str(data_dir)


def test_corrupt_records_are_skipped_and_counted_in_training(corrupt_dataset):
  stream = data.build(make_config(), "train", batch_size=4, seed=0, data_dir=corrupt_dataset)
  batches = take(stream, 6)  # 3 batches per epoch: the 12 records twice
  assert stream.skipped == 6
  for b in batches:
    assert b["video"].shape == (4, 4, 32, 32, 3) and len(b["label"]) == 4
    assert not set(b["label"]) & {2, 5, 8}
  for epoch in (batches[:3], batches[3:]):
    # Every good record once; a skipped record's slot holds a copy of another clip.
    labels = np.concatenate([b["label"] for b in epoch])
    assert set(labels) == set(range(12)) - {2, 5, 8}
  resumed = data.build(make_config(), "train", batch_size=4, seed=0, start_batch=4,
                       data_dir=corrupt_dataset)
  assert_same_batches(take(resumed, 2), batches[4:6])


def test_corrupt_records_are_skipped_and_counted_in_evaluation(corrupt_dataset):
  batches = list(data.build(make_config(), "validation", batch_size=5, seed=0,
                            data_dir=corrupt_dataset))
  assert len(batches) == 3  # 12 records in windows of 5
  mask = np.concatenate([b["mask"] for b in batches])
  skipped = np.concatenate([b["skipped"] for b in batches])
  assert mask.sum() == 9 and skipped.sum() == 3 and not (mask * skipped).any()
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert sorted(labels) == sorted(set(range(12)) - {2, 5, 8})


def test_a_batch_of_only_corrupt_records_is_an_error(tmp_path):
  write_split(tmp_path, "train", [2], corrupt=(0, 1))
  with pytest.raises(tf.errors.InvalidArgumentError, match="All 2 records of a train batch"):
    next(data.build(make_config(), "train", batch_size=2, seed=0, data_dir=str(tmp_path)))


# --- train stream ------------------------------------------------------------------------------


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
  assert set(fresh_batches[0]) == {"video", "label"}
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


def test_repeated_augmentation(id_dataset):
  """batch 4, repeated_aug 2: 2 records per batch, each as 2 consecutive, differently augmented
  clips; an epoch is the 22 records once: 11 batches."""
  cfg = make_config(repeated_aug=2, frame_stride=2)
  batches = take(train_stream(id_dataset, cfg), 12)
  for b in batches:
    assert b["label"][0] == b["label"][1] and b["label"][2] == b["label"][3]
    # The copies share their frames (sampled once): the same gray levels.
    np.testing.assert_array_equal(frame_indices(b["video"][0]), frame_indices(b["video"][1]))
  first_epoch = np.concatenate([b["label"][::2] for b in batches[:11]])
  assert sorted(first_epoch) == list(range(22))
  assert_same_batches(take(train_stream(id_dataset, cfg, start_batch=10), 2), batches[10:12])
  with pytest.raises(ValueError, match="repeated_aug=3: must divide the batch of 4 clips"):
    train_stream(id_dataset, make_config(repeated_aug=3))


def test_train_two_hosts_differ_and_augmentation_is_seeded(id_dataset):
  cfg = make_config(flip="random")
  a = take(train_stream(id_dataset, cfg, process_index=0, process_count=2), 2)
  b = take(train_stream(id_dataset, cfg, process_index=1, process_count=2), 2)
  # Host 0 reads shards 0 and 2 (labels 0-7, 15-21), host 1 shard 1 (labels 8-14).
  assert set(np.concatenate([x["label"] for x in a])) <= set(range(8)) | set(range(15, 22))
  assert set(np.concatenate([x["label"] for x in b])) <= set(range(8, 15))
  assert_same_batches(a, take(train_stream(id_dataset, cfg, process_index=0, process_count=2), 2))


def test_swap_labels_reads_labels_json(id_dataset, tmp_path):
  write_split(tmp_path, "train", [4], num_frames=4)
  cfg = make_config(flip="swap_labels", num_classes=4)
  with pytest.raises(FileNotFoundError, match="labels.json"):
    train_stream(str(tmp_path), cfg)
  with open(tmp_path / records.LABELS, "w") as f:
    json.dump(["left", "right", "up", "down"], f)
  labels = np.concatenate([b["label"] for b in take(train_stream(str(tmp_path), cfg), 8)])
  assert set(labels) == {0, 1, 2, 3}  # 0 and 1 swap when flipped
  with pytest.raises(ValueError, match="num_classes=5: the dataset's labels.json names 4"):
    train_stream(str(tmp_path), make_config(flip="swap_labels", num_classes=5))


def test_batch_larger_than_host_data_is_an_error(id_dataset):
  with pytest.raises(ValueError, match="only 22 training records, fewer than the 32 of one"):
    train_stream(id_dataset, batch_size=32)


@pytest.mark.parametrize("field, value, message", [
    ("crop_size", 40, "min_resize=36: must be at least config.data.crop_size=40"),
    ("frame_stride", 0, "frame_stride=0: must be at least 1"),
    ("sampler", "uniform", "sampler='uniform': choose one of ('dense', 'segment')"),
    ("flip", "yes", "flip='yes': choose one of ('none', 'random', 'swap_labels')"),
    ("eval_crops", 2, "eval_crops=2: choose one of (1, 3)"),
    ("crop_scale", (0.5, 0.1), "crop_scale=(0.5, 0.1): give (low, high)"),
    ("randaugment_magnitude", 11.0, "randaugment_magnitude=11.0: must be in [0, 10]"),
    ("random_erasing", 1.5, "random_erasing=1.5: is a probability"),
    ("mixup_alpha", -1.0, "mixup_alpha=-1.0: must be >= 0"),
    ("max_resize", 20, "max_resize=20: must be 0 (off) or at least"),
    ("eval_resize", 16, "eval_resize=16: must be 0 (min_resize) or at least"),
])
def test_bad_config_values_are_named(field, value, message):
  with pytest.raises(errors.ConfigError, match="config.data." + message.replace(
      "(", r"\(").replace(")", r"\)").replace("[", r"\[").replace(".", r"\.")):
    data.build(make_config(**{field: value}), "train", batch_size=2, seed=0, data_dir="x")
  with pytest.raises(errors.ConfigError, match="frame_stride=2: the segment sampler"):
    pipeline.check_config(make_config(sampler="segment", frame_stride=2))
