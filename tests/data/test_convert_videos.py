"""Tests of the video converter (vidtx.data.convert_videos): the four annotation formats, the
round trip through the training pipeline, failures and re-runs. The videos are made with the
helpers of test_video_files.py."""

import csv
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from test_video_files import (SHORT_SIDE, STORED, nearest_sources, resized, source_frames,
                              write_garbage, write_video, write_zero_frame_video)
from vidtx import configuration
from vidtx.data import convert_videos, pipeline, records

def read_records(output_dir, split):
  """{source path: (jpeg frames, label, label string, frame rate)} of a split, read raw."""
  out = {}
  for path in records.list_files(str(output_dir), split):
    for record in tf.data.TFRecordDataset(path):
      context, sequence = tf.io.parse_single_sequence_example(
          record,
          context_features={
              records.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
              records.LABEL_STRING_KEY: tf.io.FixedLenFeature([], tf.string),
              records.SOURCE_KEY: tf.io.FixedLenFeature([], tf.string),
              records.FRAME_RATE_KEY: tf.io.FixedLenFeature([], tf.float32)},
          sequence_features={records.FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
      out[context[records.SOURCE_KEY].numpy().decode()] = (
          list(sequence[records.FRAMES_KEY].numpy()), int(context[records.LABEL_KEY]),
          context[records.LABEL_STRING_KEY].numpy().decode(),
          float(context[records.FRAME_RATE_KEY]))
  return out


def pipeline_labels(output_dir, split):
  """The labels of a split as the training pipeline's eval pass yields them."""
  cfg = configuration.base().data
  cfg.update(dict(name="converted", num_frames=4, min_resize=32, crop_size=32,
                  data_dir=str(output_dir)))
  labels = []
  for batch in pipeline.build(cfg, split, train=False, batch_size=4, seed=0):
    labels += batch["label"][batch["mask"] > 0].tolist()
  return sorted(labels)


def failures(output_dir, split):
  with open(os.path.join(output_dir, f"{split}_failures.csv")) as f:
    return {os.path.basename(row["path"]): row["reason"] for row in csv.DictReader(f)}


# --- formats, round trip through the training pipeline ---------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """A folders-format tree, its conversion and the source frames of every good video."""
  root = tmp_path_factory.mktemp("videos")
  sources = {
      "train/jumping/a.mp4": write_video(root / "train/jumping/a.mp4", source_frames(20, 0),
                                         "libx264"),
      "train/jumping/b.webm": write_video(root / "train/jumping/b.webm", source_frames(16, 1),
                                          "libvpx-vp9"),
      "train/running/c.mp4": write_video(root / "train/running/c.mp4", source_frames(12, 2),
                                         "libx264"),
      "val/running/d.mkv": write_video(root / "val/running/d.mkv", source_frames(14, 3),
                                       "libx264"),
  }
  write_garbage(str(root / "train/running/broken.mp4"))
  write_zero_frame_video(root / "val/jumping/empty.avi")
  with open(root / "train/running/notes.txt", "w") as f:
    f.write("not a video")
  out = tmp_path_factory.mktemp("shards")
  summary = convert_videos.convert(str(out), format="folders", video_root=str(root),
                                   short_side=SHORT_SIDE, examples_per_shard=2, workers=1)
  return root, out, sources, summary


def test_folders_round_trip(folders):
  _, out, sources, summary = folders
  assert summary == dict(splits={"train": 3, "validation": 1},
                         failures={"train": 1, "validation": 1}, shards_written=3,
                         shards_skipped=0)
  with open(out / "labels.json") as f:
    labels = json.load(f)
  assert labels == ["jumping", "running"]
  with open(out / "metadata.json") as f:
    metadata = json.load(f)
  assert metadata["splits"] == {"train": 3, "validation": 1}
  assert sum(metadata["shard_counts"]["train"].values()) == 3
  assert sorted(os.listdir(out)) == [
      ".convert", "labels.json", "metadata.json", "train-00000-of-00002.tfrecord",
      "train-00001-of-00002.tfrecord", "train_failures.csv", "validation-00000-of-00001.tfrecord",
      "validation_failures.csv"]
  assert failures(out, "train") == {"broken.mp4": "corrupt"}
  assert failures(out, "validation") == {"empty.avi": "zero_frames"}

  stored = {**read_records(out, "train"), **read_records(out, "validation")}
  assert sorted(stored) == sorted(sources)
  for source_path, (frames, label, label_string, rate) in stored.items():
    source = sources[source_path]
    assert label_string == source_path.split("/")[1] == labels[label]
    assert rate == 25.0
    assert len(frames) == len(source)
    first = tf.io.decode_jpeg(frames[0]).numpy().astype(np.float32)
    assert first.shape == (*STORED, 3)
    assert np.abs(first - resized(source[:1])[0]).mean() < 8
  assert pipeline_labels(out, "train") == [0, 0, 1]
  assert pipeline_labels(out, "validation") == [1]


def test_rerun_skips_finished_shards(folders, tmp_path):
  root, out, _, _ = folders
  shards = sorted(p for p in os.listdir(out) if p.endswith(".tfrecord"))
  mtimes = {p: os.stat(out / p).st_mtime_ns for p in shards}
  with open(out / "metadata.json") as f:
    metadata = json.load(f)
  kwargs = dict(format="folders", video_root=str(root), short_side=SHORT_SIDE,
                examples_per_shard=2, workers=1)
  summary = convert_videos.convert(str(out), **kwargs)
  assert (summary["shards_written"], summary["shards_skipped"]) == (0, 3)
  assert {p: os.stat(out / p).st_mtime_ns for p in shards} == mtimes
  with open(out / "metadata.json") as f:
    assert json.load(f) == metadata  # failures of skipped shards are remembered
  assert failures(out, "train") == {"broken.mp4": "corrupt"}

  # A lost shard is redone, alone; other settings redo everything and drop stale shards.
  os.remove(out / shards[1])
  summary = convert_videos.convert(str(out), **kwargs)
  assert (summary["shards_written"], summary["shards_skipped"]) == (1, 2)
  with open(out / "metadata.json") as f:
    assert json.load(f) == metadata
  copy = tmp_path / "copy"
  convert_videos.convert(str(copy), **kwargs)
  summary = convert_videos.convert(str(copy), **{**kwargs, "examples_per_shard": 4})
  # The validation shard keeps its name and videos: skipped.
  assert (summary["shards_written"], summary["shards_skipped"]) == (1, 1)
  assert sorted(p for p in os.listdir(copy) if p.endswith(".tfrecord")) == [
      "train-00000-of-00001.tfrecord", "validation-00000-of-00001.tfrecord"]
  assert sorted(os.listdir(copy / ".convert")) == [
      "train-00000-of-00001.tfrecord.json", "validation-00000-of-00001.tfrecord.json"]


def test_kinetics_csv(tmp_path):
  root = tmp_path / "k400"
  sources = {
      # Trimmed clips as the CVDF download names them, flat and in a class folder.
      "train/vid_A_000004_000014.mp4": source_frames(12, 0),
      "train/juggling balls/vid_B_000000_000010.mp4": source_frames(10, 1),
      # CVDF's replacement for a corrupted file wins over the original.
      "replacement/replacement_for_corrupted_k400/vid_C_000002_000012.mp4": source_frames(8, 2),
      # A full video: the window 1-3 s is cut out of its 4 s.
      "val/vid_D.mp4": source_frames(40, 3),
  }
  for name, frames in sources.items():
    write_video(root / name, frames, "libx264", fps=10)
  write_garbage(str(root / "train/vid_C_000002_000012.mp4"))
  with open(tmp_path / "train.csv", "w") as f:
    f.write("label,youtube_id,time_start,time_end,split\n"
            "abseiling,vid_A,4,14,train\n"
            '"juggling balls",vid_B,0,10,train\n'
            "abseiling,vid_C,2,12,train\n")
  with open(tmp_path / "val.csv", "w") as f:
    f.write("label,youtube_id,time_start,time_end,split\n"
            "juggling balls,vid_D,1,3,val\n"
            "abseiling,vid_gone,0,10,val\n")
  out = tmp_path / "shards"
  summary = convert_videos.convert(
      str(out), format="kinetics", video_root=str(root),
      annotations=[str(tmp_path / "train.csv"), str(tmp_path / "val.csv")],
      short_side=SHORT_SIDE, workers=1)
  assert summary["splits"] == {"train": 3, "validation": 1}
  assert failures(out, "validation") == {"vid_gone_000000_000010.mp4": "missing"}
  with open(out / "labels.json") as f:
    assert json.load(f) == ["abseiling", "juggling balls"]
  stored = {**read_records(out, "train"), **read_records(out, "validation")}
  assert sorted(stored) == sorted(sources)
  want = {"vid_A": (0, range(12)), "vid_B": (1, range(10)), "vid_C": (0, range(8)),
          "vid_D": (1, range(10, 30))}
  for name, (frames, label, _, rate) in stored.items():
    want_label, want_frames = want[name.split("/")[-1][:5]]
    assert label == want_label and rate == 10.0
    assert nearest_sources(frames, sources[name])[0] == list(want_frames)
  assert pipeline_labels(out, "validation") == [1]


def test_ssv2_json(tmp_path):
  root = tmp_path / "videos"
  for vid, seed in (("11", 0), ("12", 1), ("13", 2)):
    write_video(root / f"{vid}.webm", source_frames(10, seed), "libvpx-vp9")
  labels = {"Pushing something from left to right": "0", "Holding something": "1",
            "Putting something next to something": "2"}
  lists = {
      "train": [{"id": "11", "template": "Holding [something]", "label": "holding a cup"},
                {"id": "12", "template": "Pushing [something] from left to right"}],
      "validation": [{"id": "13", "template": "Putting [something] next to [something]"}],
  }
  for name, value in (("labels.json", labels), ("something-something-v2-train.json",
                                                lists["train"]),
                      ("something-something-v2-validation.json", lists["validation"])):
    with open(tmp_path / name, "w") as f:
      json.dump(value, f)
  out = tmp_path / "shards"
  annotations = [str(tmp_path / "something-something-v2-train.json"),
                 str(tmp_path / "something-something-v2-validation.json")]
  summary = convert_videos.convert(str(out), format="ssv2", video_root=str(root),
                                   labels=str(tmp_path / "labels.json"), annotations=annotations,
                                   short_side=SHORT_SIDE, workers=1)
  assert summary["splits"] == {"train": 2, "validation": 1}
  with open(out / "labels.json") as f:
    assert json.load(f) == list(labels)  # the official indices
  stored = {**read_records(out, "train"), **read_records(out, "validation")}
  assert {k: v[1:3] for k, v in stored.items()} == {
      "11.webm": (1, "Holding something"), "12.webm": (0, "Pushing something from left to right"),
      "13.webm": (2, "Putting something next to something")}
  assert all(len(v[0]) == 10 for v in stored.values())

  lists["train"].append({"id": "14", "template": "Spinning [something]"})
  with open(tmp_path / "something-something-v2-train.json", "w") as f:
    json.dump(lists["train"], f)
  with pytest.raises(ValueError, match="video 14 has the template 'Spinning something'"):
    convert_videos.convert(str(out), format="ssv2", video_root=str(root),
                           labels=str(tmp_path / "labels.json"), annotations=annotations)


def test_csv_with_integer_labels_and_fps(tmp_path):
  root = tmp_path / "clips"
  source = write_video(root / "x/one.mp4", source_frames(20, 0), "libx264")
  write_video(root / "two.webm", source_frames(20, 1), "libvpx-vp9")
  with open(tmp_path / "train.csv", "w") as f:
    f.write("path,label\nx/one.mp4,2\ntwo.webm,0\nthree.mp4,2\n")
  out = tmp_path / "shards"
  summary = convert_videos.convert(str(out), format="csv", video_root=str(root),
                                   annotations=[f"train={tmp_path / 'train.csv'}"],
                                   short_side=SHORT_SIDE, fps=10, workers=1)
  assert summary["splits"] == {"train": 2} and summary["failures"] == {"train": 1}
  assert failures(out, "train") == {"three.mp4": "missing"}
  with open(out / "labels.json") as f:
    assert json.load(f) == ["0", "1", "2"]
  stored = read_records(out, "train")
  frames, label, _, rate = stored[os.path.join("x", "one.mp4")]
  assert label == 2 and rate == 10.0
  assert nearest_sources(frames, source)[0] == [0, 2, 5, 7, 10, 12, 15, 17]
  assert len(stored["two.webm"][0]) == 8


def test_annotation_errors_name_the_problem(tmp_path):
  (tmp_path / "v").mkdir()
  bad = tmp_path / "list.csv"
  with open(bad, "w") as f:
    f.write("a.mp4,walking\nb.mp4,3\n")
  with pytest.raises(ValueError, match="Cannot tell the split of .*list.csv.*<split>="):
    convert_videos.list_videos("csv", str(tmp_path / "v"), [str(bad)])
  with pytest.raises(ValueError, match="mix integers and class names"):
    convert_videos.list_videos("csv", str(tmp_path / "v"), [f"train={bad}"])
  with pytest.raises(ValueError, match="not a Kinetics CSV"):
    convert_videos.list_videos("kinetics", str(tmp_path / "v"), [f"train={bad}"])
  with pytest.raises(ValueError, match="--format='hmdb'"):
    convert_videos.list_videos("hmdb", str(tmp_path / "v"))
  with pytest.raises(ValueError, match="--examples_per_shard=0"):
    convert_videos.convert(str(tmp_path / "o"), format="folders", video_root=str(tmp_path / "v"),
                           examples_per_shard=0)


def test_the_log_names_failed_and_misplaced_videos(tmp_path, caplog):
  root = tmp_path / "videos"
  write_video(root / "train/walking/a.mp4", source_frames(4, 0), "libx264")
  write_garbage(str(root / "train/walking/broken.mp4"))
  for name in ("b.mp4", "c.mkv"):  # beside the class folders, not in one
    write_video(root / "train" / name, source_frames(4, 1), "libx264")
  # absl's logger too: an absl app run earlier in this process (a CLI test) leaves it at WARNING.
  caplog.set_level(logging.INFO, logger="absl")
  summary = convert_videos.convert(str(tmp_path / "out"), format="folders", video_root=str(root),
                                   short_side=SHORT_SIDE, workers=1)
  assert summary["splits"] == {"train": 1} and summary["failures"] == {"train": 1}
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert f"Ignored 2 video files that are not in a class folder, e.g. {root}/train/b.mp4: " \
      "--format=folders reads <video_root>/<split>/<class>/<video>" in warnings
  failed, = [w for w in warnings if w.startswith("Cannot convert")]
  assert failed.startswith(f"Cannot convert {root}/train/walking/broken.mp4: corrupt: ")
  assert failed.endswith(" (skipped; listed in train_failures.csv)")


def test_progress_shows_an_eta_only_after_enough_videos(monkeypatch, caplog):
  clock = [0.0]
  monkeypatch.setattr(convert_videos.time, "monotonic", lambda: clock[0])
  monkeypatch.setattr(convert_videos, "LOG_EVERY_S", 0.0)  # a line per video
  # absl's logger too: an absl app run earlier in this process (a CLI test) leaves it at WARNING.
  caplog.set_level(logging.INFO, logger="absl")
  progress = convert_videos._Progress(total=1000)  # pylint: disable=protected-access
  clock[0] = 100.0  # a slow first video (the workers start): its rate says little
  progress(None)
  for _ in range(convert_videos.ETA_AFTER_VIDEOS - 1):
    clock[0] += 1.0
    progress("x.mp4: corrupt: broken")
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == "Converted 1/1000 videos (0.0 videos/s), 0 failed so far"
  assert lines[-2:] == [
      "Cannot convert x.mp4: corrupt: broken",
      f"Converted 20/1000 videos (0.2 videos/s, ETA {980 / (20 / 119) / 60:.1f} min), 19 failed "
      "so far"]
  assert sum("ETA" in line for line in lines) == 1


def test_command_line_with_worker_processes(tmp_path):
  root = tmp_path / "clips"
  for i in range(4):
    write_video(root / f"train/class_{i % 2}/{i}.mp4", source_frames(8, i), "libx264")
  write_garbage(str(root / "validation/class_0/broken.mp4"))
  out = tmp_path / "shards"
  result = subprocess.run(
      [sys.executable, "-m", "vidtx.data.convert_videos", "--format=folders",
       f"--video_root={root}", f"--output_dir={out}", "--examples_per_shard=2", "--workers=2",
       "--short_side=32"], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  # A worker's failure is logged by the main process, naming the file.
  assert f"Cannot convert {root}/validation/class_0/broken.mp4: corrupt: " in result.stderr
  with open(out / "metadata.json") as f:
    assert json.load(f)["shard_counts"]["train"] == {
        "train-00000-of-00002.tfrecord": 2, "train-00001-of-00002.tfrecord": 2}
  assert len(read_records(out, "train")) == 4
