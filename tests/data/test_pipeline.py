"""Tests of the tf.data pipeline (vidtx.data.pipeline): eval batches, hosts, corrupt records,
truncated shards, repeated augmentation, train determinism and resume, the role of a split,
config checks, prompt shutdown."""

import itertools
import json
import os
import shutil
import weakref

import numpy as np
import pytest
import tensorflow as tf

from test_clips import frame_indices, gray_clip, make_config
from test_train import truncate
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
  batches = list(data.build(cfg, "validation", train=False, batch_size=4, seed=0,
                            data_dir=id_dataset))
  assert len(batches) == 6
  for b in batches:
    assert b["video"].shape == (4, 4, 32, 32, 3) and b["video"].dtype == np.uint8
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
  batches = list(data.build(cfg, "validation", train=False, batch_size=8, seed=0,
                            data_dir=id_dataset))
  assert [b["video"].shape for b in batches] == [(8, 6, 4, 32, 32, 3)] * 3
  assert sum(b["mask"].sum() for b in batches) == 21


def test_eval_two_hosts_cover_every_example_once(id_dataset):
  cfg = make_config()
  labels, num_batches = [], []
  for host in range(2):
    batches = list(data.build(cfg, "validation", train=False, batch_size=4, seed=0,
                              process_index=host, process_count=2, data_dir=id_dataset))
    num_batches.append(len(batches))
    for b in batches:
      labels += b["label"][b["mask"] > 0].tolist()
  assert num_batches == [3, 3]  # host 0 has 6 + 5 clips, host 1 has 5 + 5: same step count
  assert sorted(labels) == list(range(21))


def test_host_without_files_is_an_error(id_dataset):
  with pytest.raises(ValueError, match="Host 3 of 4 gets none of the 3 shard files"):
    data.build(make_config(), "train", train=True, batch_size=2, seed=0, process_index=3,
               process_count=4, data_dir=id_dataset)


def test_missing_data_dir_names_data_dir(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.data.data_dir") as e:
    data.build(make_config(), "validation", train=False, batch_size=2, seed=0, data_dir=missing)
  assert missing in str(e.value) and "validation-*-of-*" in str(e.value)
  with pytest.raises(ValueError, match="pass data_dir=prepare"):
    data.build(make_config(), "validation", train=False, batch_size=2, seed=0)


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
  stream = data.build(make_config(), "train", train=True, batch_size=4, seed=0,
                      data_dir=corrupt_dataset)
  batches = take(stream, 6)  # 3 batches per epoch: the 12 records twice
  assert stream.skipped == 6
  for b in batches:
    assert b["video"].shape == (4, 4, 32, 32, 3) and len(b["label"]) == 4
    assert not set(b["label"]) & {2, 5, 8}
  for epoch in (batches[:3], batches[3:]):
    # Every good record once; a skipped record's slot holds a copy of another clip.
    labels = np.concatenate([b["label"] for b in epoch])
    assert set(labels) == set(range(12)) - {2, 5, 8}
  resumed = data.build(make_config(), "train", train=True, batch_size=4, seed=0, start_batch=4,
                       data_dir=corrupt_dataset)
  assert_same_batches(take(resumed, 2), batches[4:6])


def test_corrupt_records_are_skipped_and_counted_in_evaluation(corrupt_dataset):
  batches = list(data.build(make_config(), "validation", train=False, batch_size=5, seed=0,
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
    next(data.build(make_config(), "train", train=True, batch_size=2, seed=0,
                    data_dir=str(tmp_path)))


# --- truncated shards ----------------------------------------------------------------------------


def write_metadata(data_dir, shard_sizes):
  """metadata.json as the converter writes it: {split: shard sizes}."""
  metadata = {"splits": {}, "shard_counts": {}}
  for split, sizes in shard_sizes.items():
    names = [records.shard_name(split, k, len(sizes)) for k in range(len(sizes))]
    metadata["shard_counts"][split] = dict(zip(names, sizes))
    metadata["splits"][split] = sum(sizes)
  with open(os.path.join(data_dir, records.METADATA), "w") as f:
    json.dump(metadata, f)


def warnings_naming(caplog, path):
  return [r for r in caplog.records if r.levelname == "WARNING" and path in r.getMessage()]


@pytest.fixture(scope="module")
def truncated_dataset(tmp_path_factory):
  """16 train and 16 validation records in 2 shards each, with metadata.json; the second shard
  of each split (labels 8-15) cut to 60% of its size. Returns (data_dir, whole records left in
  each cut shard)."""
  data_dir = tmp_path_factory.mktemp("truncated")
  for split in ("train", "validation"):
    write_split(data_dir, split, [8, 8])
  write_metadata(data_dir, {"train": [8, 8], "validation": [8, 8]})
  left = {split: truncate(str(data_dir / records.shard_name(split, 1, 2)), 0.6)
          for split in ("train", "validation")}
  assert left == {"train": 4, "validation": 4}  # equal records: 60% of 8 whole is 4
  return str(data_dir), left


def test_a_truncated_shard_trains_on_its_readable_records_and_counts_the_rest(truncated_dataset,
                                                                                caplog):
  data_dir, _ = truncated_dataset
  readable = set(range(12))  # the 4 records after the cut (labels 12-15) are lost
  stream = train_stream(data_dir, make_config())
  batches = take(stream, 8)  # 16 records / 4: two epochs of 4 batches
  for epoch in (batches[:4], batches[4:]):
    labels = np.concatenate([b["label"] for b in epoch])
    assert len(labels) == 16 and set(labels) == readable  # the lost ones' slots hold copies
  assert stream.skipped == 8  # 4 lost records per epoch
  shard = os.path.join(data_dir, records.shard_name("train", 1, 2))
  assert len(warnings_naming(caplog, shard)) == 1
  # Resumed anywhere, the stream goes on with the batches of the uninterrupted one.
  for start in (3, 5):
    resumed = train_stream(data_dir, make_config(), start_batch=start)
    assert_same_batches(take(resumed, 8 - start), batches[start:])
  assert len(warnings_naming(caplog, shard)) == 1  # once per process


def test_a_truncated_shard_is_evaluated_up_to_the_cut_and_the_rest_counted(truncated_dataset,
                                                                            caplog):
  data_dir, _ = truncated_dataset
  batches = list(data.build(make_config(), "validation", train=False, batch_size=5, seed=0,
                            data_dir=data_dir))
  assert len(batches) == 4  # 16 records, as metadata.json says, in windows of 5
  mask = np.concatenate([b["mask"] for b in batches])
  skipped = np.concatenate([b["skipped"] for b in batches])
  assert mask.sum() == 12 and skipped.sum() == 4 and not (mask * skipped).any()
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert sorted(labels) == list(range(12))
  shard = os.path.join(data_dir, records.shard_name("validation", 1, 2))
  assert len(warnings_naming(caplog, shard)) == 1


def test_without_metadata_a_truncated_shard_counts_the_record_cut_in_two(truncated_dataset,
                                                                          tmp_path, caplog):
  data_dir = str(tmp_path / "copy")
  shutil.copytree(truncated_dataset[0], data_dir)
  os.remove(os.path.join(data_dir, records.METADATA))  # counted by reading: 8 + 4 whole records
  batches = list(data.build(make_config(), "validation", train=False, batch_size=16, seed=0,
                            data_dir=data_dir))
  assert len(batches) == 1
  assert batches[0]["mask"].sum() == 12 and batches[0]["skipped"].sum() == 1
  shard = os.path.join(data_dir, records.shard_name("validation", 1, 2))
  assert len(warnings_naming(caplog, shard)) == 1
  stream = train_stream(data_dir, make_config(), batch_size=13)  # one batch of all 13 records
  take(stream, 2)
  assert stream.skipped == 2


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
  return data.build(cfg or make_config(frame_stride=2), "train", train=True, data_dir=data_dir,
                    **kwargs)


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
    data.build(make_config(**{field: value}), "train", train=True, batch_size=2, seed=0,
               data_dir="x")
  with pytest.raises(errors.ConfigError, match="frame_stride=2: the segment sampler"):
    pipeline.check_config(make_config(sampler="segment", frame_stride=2))


# --- the role decides, not the split's name ---------------------------------------------------


def test_the_train_split_can_be_evaluated(id_dataset):
  # At most a few batches: read as training, the split would never end.
  batches = list(itertools.islice(data.build(make_config(), "train", train=False, batch_size=8,
                                             seed=0, data_dir=id_dataset), 5))
  assert len(batches) == 3  # 22 records
  assert all(set(b) == {"video", "label", "mask", "skipped"} for b in batches)
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert sorted(labels) == list(range(22))  # every train record once, in order
  with pytest.raises(ValueError, match="start_batch=2 is only supported for training"):
    data.build(make_config(), "train", train=False, batch_size=8, seed=0, start_batch=2,
               data_dir=id_dataset)


def test_num_classes_must_be_the_count_labels_json_names(tmp_path):
  write_split(tmp_path, "train", [2], num_frames=4)
  assert pipeline.check_num_classes(make_config(num_classes=400), str(tmp_path)) is None
  with open(tmp_path / records.LABELS, "w") as f:
    json.dump([f"class {i}" for i in range(8)], f)
  with pytest.raises(errors.ConfigError, match=r"^config.data.num_classes=400: the dataset's "
                     r"labels.json names 8 classes: set --config.data.num_classes=8$"):
    pipeline.check_num_classes(make_config(num_classes=400), str(tmp_path))
  assert len(pipeline.check_num_classes(make_config(num_classes=8), str(tmp_path))) == 8


# --- shutting down ------------------------------------------------------------------------------


def test_pipelines_stop_promptly(id_dataset):
  """An iterator's deletion waits out the sleep of TF's autotuning thread (up to a minute), so
  no pipeline runs one; a closed train stream lets go of its iterator at once."""
  cfg = make_config()
  files = records.list_files(id_dataset, "train")
  counts = records.file_counts(id_dataset, files)
  for ds in (pipeline.train_dataset(cfg, files, counts, batch_size=4, seed=0),
             pipeline.eval_dataset(cfg, files, counts, batch_size=4)):
    assert ds.options().autotune.enabled is False
  stream = train_stream(id_dataset)
  next(stream)
  iterator = weakref.ref(stream._batches._iterator)  # pylint: disable=protected-access
  stream.close()
  assert stream.closed and iterator() is None
  with pytest.raises(StopIteration):
    next(stream)
