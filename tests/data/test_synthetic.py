"""Tests of the synthetic motion dataset: the generator, the writer and prepare()."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from test_video_files import source_frames, write_video
from vidtx import configuration, data, errors
from vidtx.data import convert_videos, records
from vidtx.data import synthetic


def make_config(**overrides):
  cfg = configuration.base().data
  cfg.update(dict(synthetic=dict(num_train=24, num_val=10, num_shards=3)))
  cfg.update(overrides)
  return cfg


def _parse_file(path):
  out = []
  for record in tf.data.TFRecordDataset(path):
    context, sequence = tf.io.parse_single_sequence_example(
        record,
        context_features={"clip/label/index": tf.io.FixedLenFeature([], tf.int64),
                          "clip/label/string": tf.io.FixedLenFeature([], tf.string)},
        sequence_features={"image/encoded": tf.io.FixedLenSequenceFeature([], tf.string)})
    frames = np.stack([tf.io.decode_jpeg(x).numpy() for x in sequence["image/encoded"]])
    out.append((frames, int(context["clip/label/index"]),
                context["clip/label/string"].numpy().decode()))
  return out


def _mask_stats(mask):
  """Per-frame area, centroid x, centroid y and principal-axis angle (degrees, y down)."""
  ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]] + 0.5
  stats = []
  for m in mask:
    area = m.sum()
    cx, cy = (xs * m).sum() / area, (ys * m).sum() / area
    mxx, myy = ((xs - cx)**2 * m).sum(), ((ys - cy)**2 * m).sum()
    mxy = ((xs - cx) * (ys - cy) * m).sum()
    stats.append((area, cx, cy, 0.5 * np.degrees(np.arctan2(2 * mxy, mxx - myy))))
  return np.array(stats)


def test_class_names_and_order():
  assert synthetic.CLASSES == (
      "move_left", "move_right", "move_up", "move_down", "fade_in", "fade_out", "grow",
      "shrink")


@pytest.mark.parametrize("pair", range(4))
def test_second_class_of_pair_is_exact_time_reversal(pair):
  for seed in [0, 1, 123, (7, 1, 42)]:
    first, first_mask = synthetic.generate_clip(seed, 2 * pair, return_mask=True)
    second, second_mask = synthetic.generate_clip(seed, 2 * pair + 1, return_mask=True)
    np.testing.assert_array_equal(second, first[::-1])
    np.testing.assert_array_equal(second_mask, first_mask[::-1])
    # The clip really changes over time, so the reversal is not trivially equal.
    assert not np.array_equal(first, second)


def test_generation_is_deterministic_and_depends_on_seed():
  a = synthetic.generate_clip((0, 0, 5), 3)
  assert a.shape == (16, 40, 40, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.generate_clip((0, 0, 5), 3))
  for other in [(0, 0, 6), (0, 1, 5), (1, 0, 5)]:
    b = synthetic.generate_clip(other, 3)
    assert np.abs(a.astype(int) - b).mean() > 5
  small = synthetic.generate_clip(0, 6, num_frames=5, size=24)
  assert small.shape == (5, 24, 24, 3)


@pytest.mark.parametrize("label", range(8))
def test_motion_direction_and_speed(label):
  """Each class moves the object the way its name says, at the documented speeds."""
  for seed in range(10):
    frames, mask = synthetic.generate_clip(seed, label, return_mask=True)
    assert mask.sum(axis=(1, 2)).min() > 5  # the object is visible in every frame
    area, cx, cy, angle = _mask_stats(mask).T
    if label < 4:  # left/up: x/y decrease every frame; right/down: increase
      steps = np.diff(cx if label < 2 else cy)
      assert np.all(steps < 0) if label % 2 == 0 else np.all(steps > 0)
      assert 0.8 < abs(steps.mean()) < 2.6
    elif label < 6:  # fade in / out: a still object whose pixels move away from / towards
      # the background, steadily over the clip
      assert np.all(mask == mask[0])
      faint = frames[0] if label == 4 else frames[-1]
      change = np.abs(frames.astype(float) - faint)[:, mask[0]].mean(axis=(1, 2))
      trend = np.corrcoef(np.arange(len(change)), change)[0, 1]
      assert (trend if label == 4 else -trend) > 0.9
      assert change.max() > 25  # clearly visible at full opacity (10% of the range)
    else:  # grow / shrink by a few % of the size per frame
      rate = np.log(area[1:] / area[:-1]).mean() / 2
      assert 0.02 < (rate if label == 6 else -rate) < 0.08


def test_write_dataset_round_trip(tmp_path):
  meta = synthetic.write_dataset(tmp_path, num_train=10, num_val=4, num_frames=6, size=24,
                                 seed=3, num_shards=3)
  names = sorted(os.listdir(tmp_path))
  assert names == ["labels.json", "metadata.json", "train-00000-of-00003.tfrecord",
                   "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord",
                   "validation-00000-of-00003.tfrecord", "validation-00001-of-00003.tfrecord",
                   "validation-00002-of-00003.tfrecord"]  # and no temp files left behind
  with open(tmp_path / "metadata.json") as f:
    assert json.load(f) == meta
  with open(tmp_path / "labels.json") as f:
    assert json.load(f) == list(synthetic.CLASSES)  # index = label
  assert meta["classes"] == list(synthetic.CLASSES)
  assert meta["splits"] == {"train": 10, "validation": 4}
  assert meta["generation"]["seed"] == 3 and meta["generation"]["num_frames"] == 6

  for split, count, split_id in [("train", 10, 0), ("validation", 4, 1)]:
    records = []
    for name in sorted(meta["shard_counts"][split]):
      parsed = _parse_file(str(tmp_path / name))
      assert len(parsed) == meta["shard_counts"][split][name]
      records += parsed
    assert len(records) == count
    for i, (frames, label, label_string) in enumerate(records):
      assert label == i % 8 and label_string == synthetic.CLASSES[label]
      want = synthetic.generate_clip((3, split_id, i), label, num_frames=6, size=24)
      assert frames.shape == want.shape == (6, 24, 24, 3)
      # JPEG (quality 90) mostly loses the per-pixel noise.
      diff = np.abs(frames.astype(int) - want)
      assert diff.mean() < 6 and np.percentile(diff, 99) < 40
      # Every stored frame is closest to the generated frame at the same position.
      err = np.abs(frames[:, None].astype(int) - want[None]).mean(axis=(2, 3, 4))
      np.testing.assert_array_equal(err.argmin(axis=1), np.arange(6))


def test_worker_processes_write_the_same_shards(tmp_path, monkeypatch):
  args = dict(num_train=6, num_val=2, num_frames=2, size=16, num_shards=2)
  synthetic.write_dataset(tmp_path / "here", **args)
  monkeypatch.setattr(synthetic, "CLIPS_PER_WORKER", 1)  # 2 spawned workers, one per core
  synthetic.write_dataset(tmp_path / "workers", **args)
  names = sorted(os.listdir(tmp_path / "here"))
  assert names == sorted(os.listdir(tmp_path / "workers")) and len(names) == 6
  for name in names:
    here, workers = tmp_path / "here" / name, tmp_path / "workers" / name
    if name.endswith(".json"):
      assert here.read_text() == workers.read_text()
      continue
    clips = list(zip(_parse_file(here), _parse_file(workers), strict=True))
    assert len(clips) in (1, 3)
    for (frames_a, *labels_a), (frames_b, *labels_b) in clips:
      np.testing.assert_array_equal(frames_a, frames_b)
      assert labels_a == labels_b


def test_write_dataset_removes_stale_shards(tmp_path):
  (tmp_path / "train-00000-of-00009.tfrecord").write_bytes(b"interrupted run")
  synthetic.write_dataset(tmp_path, num_train=4, num_val=2, num_frames=2, size=16, num_shards=2)
  assert not (tmp_path / "train-00000-of-00009.tfrecord").exists()
  assert len(records.list_files(str(tmp_path), "train")) == 2


def test_prepare_generates_once(tmp_path, monkeypatch):
  cfg = make_config()
  data_dir = data.prepare(cfg, str(tmp_path))
  assert data_dir == os.path.join(str(tmp_path), "data", "synthetic_motion")
  assert data.num_examples(cfg, "train", data_dir) == 24
  assert data.num_examples(cfg, "validation", data_dir) == 10
  mtime = os.path.getmtime(os.path.join(data_dir, "metadata.json"))

  def fail(*args, **kwargs):
    raise AssertionError("prepare() regenerated an existing dataset")

  monkeypatch.setattr(synthetic, "write_dataset", fail)
  assert data.prepare(cfg, str(tmp_path)) == data_dir
  assert os.path.getmtime(os.path.join(data_dir, "metadata.json")) == mtime

  # Other generation parameters: refuse to use the stale data, and say what to do (a new
  # data_dir, not deleting anything).
  cfg.synthetic.seed = 1
  before = snapshot(data_dir)
  with pytest.raises(errors.ConfigError) as e:
    data.prepare(cfg, str(tmp_path))
  assert str(e.value) == (
      f"config.data.data_dir={data_dir!r}: holds the synthetic dataset generated with other "
      "settings (seed 0 there, 1 asked): set --config.data.data_dir to a new directory to "
      "generate it there, or config.data.synthetic back to the settings of this one")
  assert snapshot(data_dir) == before


def snapshot(directory):
  """{relative path: (size, mtime, sha256)} of every file under `directory`."""
  out = {}
  for parent, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(parent, name)
      with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(path, directory)] = (os.path.getsize(path), os.stat(path).st_mtime_ns,
                                               digest)
  return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Two tiny videos converted by vidtx.data.convert_videos (--format=folders)."""
  root = tmp_path_factory.mktemp("videos")
  for i, split in enumerate(["train", "val"]):
    write_video(root / split / f"class_{i}" / f"{i}.mp4", source_frames(4, i), "libx264")
  out = tmp_path_factory.mktemp("converted")
  convert_videos.convert(str(out), format="folders", video_root=str(root), short_side=16,
                         workers=1)
  return out


def test_prepare_refuses_a_converted_dataset_and_touches_nothing(converted, tmp_path):
  """The demo config on converted videos without --config.data.name=custom: the message says
  to add it, never to delete the user's data, and the directory is left as it was."""
  before = snapshot(converted)
  assert ".convert" in os.listdir(converted) and "metadata.json" in os.listdir(converted)
  with pytest.raises(errors.ConfigError) as e:
    data.prepare(make_config(data_dir=str(converted)), str(tmp_path))
  assert str(e.value) == (
      f"config.data.data_dir={str(converted)!r}: holds a dataset converted by "
      "vidtx.data.convert_videos, not the synthetic data: add --config.data.name=custom")
  assert "delet" not in str(e.value).lower()
  assert snapshot(converted) == before

  # A conversion not finished yet (no metadata.json): the generator must not write there either.
  unfinished = tmp_path / "unfinished"
  shutil.copytree(converted, unfinished)
  os.remove(unfinished / "metadata.json")
  before = snapshot(unfinished)
  with pytest.raises(errors.ConfigError, match=r"holds an unfinished conversion of vidtx\.data\."
                     r"convert_videos .*: run the converter again to finish it, then add "
                     r"--config\.data\.name=custom$"):
    data.prepare(make_config(data_dir=str(unfinished)), str(tmp_path))
  assert snapshot(unfinished) == before


def test_prepare_refuses_files_it_did_not_generate(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "train-00000-of-00001.tfrecord").write_bytes(b"someone's shard")
  before = snapshot(mine)
  with pytest.raises(errors.ConfigError) as e:
    data.prepare(make_config(data_dir=str(mine)), str(tmp_path))
  assert str(e.value).endswith(
      "holds files that are not the synthetic data (no metadata.json of its generator): to "
      "train on your own DMVR shards add --config.data.name=custom; for the synthetic data set "
      "--config.data.data_dir to a new directory")
  assert "delet" not in str(e.value).lower()
  assert snapshot(mine) == before


def test_prepare_finishes_a_generation_cut_short(tmp_path):
  """A directory the generator started (its marker is there) is its own: generated again."""
  cut = tmp_path / "cut"
  cut.mkdir()
  (cut / synthetic.GENERATING).write_text("")
  (cut / "train-00000-of-00009.tfrecord").write_bytes(b"interrupted run")
  cfg = make_config(data_dir=str(cut))
  cfg.synthetic.update(num_train=4, num_val=2, num_frames=2, size=16, num_shards=2)
  assert data.prepare(cfg, str(tmp_path)) == str(cut)
  assert sorted(os.listdir(cut)) == [
      "labels.json", "metadata.json", "train-00000-of-00002.tfrecord",
      "train-00001-of-00002.tfrecord", "validation-00000-of-00002.tfrecord",
      "validation-00001-of-00002.tfrecord"]  # the marker and the stale shard are gone


def test_prepare_uses_explicit_data_dir(tmp_path):
  cfg = make_config(data_dir=str(tmp_path / "mine"))
  cfg.synthetic.update(num_train=8, num_val=2, num_frames=4, size=24, num_shards=2)
  assert data.prepare(cfg, str(tmp_path / "work")) == str(tmp_path / "mine")
  assert (tmp_path / "mine" / "metadata.json").exists()
  assert not (tmp_path / "work").exists()


def test_prepare_missing_real_dataset_names_data_dir(tmp_path):
  missing = str(tmp_path / "kinetics")
  cfg = make_config(name="kinetics400", data_dir=missing)
  with pytest.raises(FileNotFoundError) as e:
    data.prepare(cfg, str(tmp_path))
  msg = str(e.value)
  assert "config.data.data_dir" in msg and missing in msg and "train-*-of-*" in msg
  assert "does not exist" in msg
  assert isinstance(e.value, ValueError)

  os.makedirs(missing)
  with pytest.raises(FileNotFoundError, match="has no shards for split 'train'"):
    data.prepare(cfg, str(tmp_path))

  with pytest.raises(FileNotFoundError, match="config.data.data_dir is empty"):
    data.prepare(make_config(name="kinetics400"), str(tmp_path))


def test_synthetic_end_to_end(tmp_path):
  """prepare() + build() give batches of the configured shapes and labels."""
  cfg = make_config()
  data_dir = data.prepare(cfg, str(tmp_path))
  batch = next(data.build(cfg, "train", train=True, batch_size=8, seed=0, data_dir=data_dir))
  assert batch["video"].shape == (8, 8, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(8))
  assert 20 < batch["video"].mean() < 235 and batch["video"].std() > 10
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in data.build(
      cfg, "validation", train=False, batch_size=4, seed=0, data_dir=data_dir)])
  np.testing.assert_array_equal(np.sort(labels), np.sort(np.arange(10) % 8))
