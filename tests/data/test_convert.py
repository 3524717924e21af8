"""Tests of the video converter: decoding, the four annotation formats, failures and re-runs.

Videos are made here with PyAV: 48x64 frames of a gradient with a moving square, so every frame
differs and a decoded frame tells which source frame it came from.
"""

import csv
import json
import os
import subprocess
import sys

import av
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vidtx import configuration
from vidtx.data import convert, dmvr

HEIGHT, WIDTH = 48, 64
SHORT_SIDE = 32
STORED = (32, 43)  # 48x64 with the short side at 32 (64 * 32 / 48 = 42.7 -> 43)


def source_frames(num_frames, seed):
  """uint8 [T, 48, 64, 3]: a smooth background and a square moving 3 px per frame."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  background = (rng.uniform(60, 180, 3) + 40 * np.sin(x / 9 + seed)[..., None]
                + 30 * np.cos(y / 7)[..., None])
  frames = np.repeat(background[None], num_frames, axis=0)
  for i in range(num_frames):
    step = 3 * i + seed  # moves right, and down a row at the right edge: never repeats
    top, left = (8 + 5 * seed + 7 * (step // 48)) % (HEIGHT - 16), step % (WIDTH - 16)
    frames[i, top:top + 16, left:left + 16] = (250, 240, 20)
  return frames.clip(0, 255).astype(np.uint8)


def write_video(path, frames, codec, fps=25):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return frames


def write_zero_frame_video(path):
  """An AVI with a video stream and no frames."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    container.start_encoding()


def write_audio_only(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w", format="mp4") as container:
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate = 16000
    container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_garbage(path, size=5000):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def resized(frames, size=STORED):
  return np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.BILINEAR))
                   for f in frames]).astype(np.float32)


def nearest_sources(jpegs, source):
  """For each stored JPEG frame: (index of the closest source frame, its mean abs error)."""
  decoded = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs]).astype(np.float32)
  errors = np.abs(decoded[:, None] - resized(source, decoded.shape[1:3])[None]).mean(
      axis=(2, 3, 4))
  return errors.argmin(axis=1).tolist(), errors.min(axis=1)


def read_records(output_dir, split):
  """{source path: (jpeg frames, label, label string, frame rate)} of a split, read raw."""
  out = {}
  for path in dmvr.list_files(str(output_dir), split):
    for record in tf.data.TFRecordDataset(path):
      context, sequence = tf.io.parse_single_sequence_example(
          record,
          context_features={
              dmvr.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
              dmvr.LABEL_STRING_KEY: tf.io.FixedLenFeature([], tf.string),
              convert.SOURCE_KEY: tf.io.FixedLenFeature([], tf.string),
              convert.FRAME_RATE_KEY: tf.io.FixedLenFeature([], tf.float32)},
          sequence_features={dmvr.FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
      out[context[convert.SOURCE_KEY].numpy().decode()] = (
          list(sequence[dmvr.FRAMES_KEY].numpy()), int(context[dmvr.LABEL_KEY]),
          context[dmvr.LABEL_STRING_KEY].numpy().decode(),
          float(context[convert.FRAME_RATE_KEY]))
  return out


def pipeline_labels(output_dir, split):
  """The labels of a split as the training pipeline's eval pass yields them."""
  cfg = configuration.base().data
  cfg.update(dict(name="converted", num_frames=4, min_resize=32, crop_size=32,
                  data_dir=str(output_dir), train_split="none"))  # an eval pass of any split
  labels = []
  for batch in dmvr.build(cfg, split, batch_size=4, seed=0):
    labels += batch["label"][batch["mask"] > 0].tolist()
  return sorted(labels)


def failures(output_dir, split):
  with open(os.path.join(output_dir, f"{split}_failures.csv")) as f:
    return {os.path.basename(row["path"]): row["reason"] for row in csv.DictReader(f)}


def test_encoders_exist():
  """The PyAV wheel carries the encoders the tests use (H.264, VP9, MPEG-4 Part 2)."""
  assert {"libx264", "libvpx-vp9", "mpeg4", "aac"} <= av.codecs_available


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx-vp9")])
def test_read_video_frames_size_and_rate(tmp_path, name, codec):
  source = write_video(tmp_path / name, source_frames(20, seed=1), codec)
  path = str(tmp_path / name)
  frames, rate = convert.read_video(path, short_side=SHORT_SIDE)
  assert rate == 25.0 and len(frames) == 20
  assert tf.io.decode_jpeg(frames[0]).shape == (*STORED, 3)
  indices, errors = nearest_sources(frames, source)
  assert indices == list(range(20)) and errors.max() < 8

  # 10 fps out of 25: the frame on screen at k / 10 s for k / 10 < 0.8 s is frame floor(2.5 k).
  frames, rate = convert.read_video(path, short_side=SHORT_SIDE, fps=10)
  assert rate == 10.0
  assert nearest_sources(frames, source)[0] == [0, 2, 5, 7, 10, 12, 15, 17]
  # 50 fps: every frame twice.
  frames, _ = convert.read_video(path, short_side=SHORT_SIDE, fps=50)
  assert nearest_sources(frames, source)[0] == [i // 2 for i in range(40)]

  # Never upscaled: a short side of 48 stays 48.
  frames, _ = convert.read_video(path, short_side=64)
  assert tf.io.decode_jpeg(frames[0]).shape == (HEIGHT, WIDTH, 3)


def test_time_window_is_cut_from_a_full_video_only(tmp_path):
  source = write_video(tmp_path / "full.mp4", source_frames(40, seed=2), "libx264", fps=10)
  path = str(tmp_path / "full.mp4")
  frames, _ = convert.read_video(path, short_side=SHORT_SIDE, window=(1.0, 3.0))
  assert nearest_sources(frames, source)[0] == list(range(10, 30))
  frames, _ = convert.read_video(path, short_side=SHORT_SIDE, fps=5, window=(1.0, 3.0))
  assert nearest_sources(frames, source)[0] == [10, 12, 14, 16, 18, 20, 22, 24, 26, 28]
  # The 4 s file is not more than 1 s longer than a 3.5 s window: it is the trimmed clip.
  frames, _ = convert.read_video(path, short_side=SHORT_SIDE, window=(10.0, 13.5))
  assert len(frames) == 40
  with pytest.raises(convert.VideoError, match="zero_frames.*window 5-5.5 s"):
    convert.read_video(path, window=(5.0, 5.5))


def test_unreadable_videos_name_the_reason(tmp_path):
  write_video(tmp_path / "good.mp4", source_frames(20, seed=0), "libx264")
  with open(tmp_path / "good.mp4", "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.mp4", "wb") as f:
    f.write(data[:len(data) // 2])  # the index (moov) is at the end: gone
  write_video(tmp_path / "good.webm", source_frames(20, seed=0), "libvpx-vp9")
  with open(tmp_path / "good.webm", "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.webm", "wb") as f:
    f.write(data[:len(data) // 2])  # decodes, but stops early
  write_garbage(str(tmp_path / "garbage.mp4"))
  write_zero_frame_video(tmp_path / "empty.avi")
  write_audio_only(tmp_path / "audio.mp4")
  want = {"missing.mp4": "missing", "truncated.mp4": "corrupt", "truncated.webm": "corrupt",
          "garbage.mp4": "corrupt", "empty.avi": "zero_frames", "audio.mp4": "no_video_stream"}
  for name, reason in want.items():
    with pytest.raises(convert.VideoError) as info:
      convert.read_video(str(tmp_path / name))
    assert info.value.reason == reason, (name, info.value)
  with pytest.raises(convert.VideoError, match="truncated: frames stop at 0.[0-4]"):
    convert.read_video(str(tmp_path / "truncated.webm"))


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
  summary = convert.convert(str(out), format="folders", video_root=str(root),
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

  records = {**read_records(out, "train"), **read_records(out, "validation")}
  assert sorted(records) == sorted(sources)
  for source_path, (frames, label, label_string, rate) in records.items():
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
  summary = convert.convert(str(out), **kwargs)
  assert (summary["shards_written"], summary["shards_skipped"]) == (0, 3)
  assert {p: os.stat(out / p).st_mtime_ns for p in shards} == mtimes
  with open(out / "metadata.json") as f:
    assert json.load(f) == metadata  # failures of skipped shards are remembered
  assert failures(out, "train") == {"broken.mp4": "corrupt"}

  # A lost shard is redone, alone; other settings redo everything and drop stale shards.
  os.remove(out / shards[1])
  summary = convert.convert(str(out), **kwargs)
  assert (summary["shards_written"], summary["shards_skipped"]) == (1, 2)
  with open(out / "metadata.json") as f:
    assert json.load(f) == metadata
  copy = tmp_path / "copy"
  convert.convert(str(copy), **kwargs)
  summary = convert.convert(str(copy), **{**kwargs, "examples_per_shard": 4})
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
  summary = convert.convert(
      str(out), format="kinetics", video_root=str(root),
      annotations=[str(tmp_path / "train.csv"), str(tmp_path / "val.csv")],
      short_side=SHORT_SIDE, workers=1)
  assert summary["splits"] == {"train": 3, "validation": 1}
  assert failures(out, "validation") == {"vid_gone_000000_000010.mp4": "missing"}
  with open(out / "labels.json") as f:
    assert json.load(f) == ["abseiling", "juggling balls"]
  records = {**read_records(out, "train"), **read_records(out, "validation")}
  assert sorted(records) == sorted(sources)
  want = {"vid_A": (0, range(12)), "vid_B": (1, range(10)), "vid_C": (0, range(8)),
          "vid_D": (1, range(10, 30))}
  for name, (frames, label, _, rate) in records.items():
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
  summary = convert.convert(str(out), format="ssv2", video_root=str(root),
                            labels=str(tmp_path / "labels.json"), annotations=annotations,
                            short_side=SHORT_SIDE, workers=1)
  assert summary["splits"] == {"train": 2, "validation": 1}
  with open(out / "labels.json") as f:
    assert json.load(f) == list(labels)  # the official indices
  records = {**read_records(out, "train"), **read_records(out, "validation")}
  assert {k: v[1:3] for k, v in records.items()} == {
      "11.webm": (1, "Holding something"), "12.webm": (0, "Pushing something from left to right"),
      "13.webm": (2, "Putting something next to something")}
  assert all(len(v[0]) == 10 for v in records.values())

  lists["train"].append({"id": "14", "template": "Spinning [something]"})
  with open(tmp_path / "something-something-v2-train.json", "w") as f:
    json.dump(lists["train"], f)
  with pytest.raises(ValueError, match="video 14 has the template 'Spinning something'"):
    convert.convert(str(out), format="ssv2", video_root=str(root),
                    labels=str(tmp_path / "labels.json"), annotations=annotations)


def test_csv_with_integer_labels_and_fps(tmp_path):
  root = tmp_path / "clips"
  source = write_video(root / "x/one.mp4", source_frames(20, 0), "libx264")
  write_video(root / "two.webm", source_frames(20, 1), "libvpx-vp9")
  with open(tmp_path / "train.csv", "w") as f:
    f.write("path,label\nx/one.mp4,2\ntwo.webm,0\nthree.mp4,2\n")
  out = tmp_path / "shards"
  summary = convert.convert(str(out), format="csv", video_root=str(root),
                            annotations=[f"train={tmp_path / 'train.csv'}"],
                            short_side=SHORT_SIDE, fps=10, workers=1)
  assert summary["splits"] == {"train": 2} and summary["failures"] == {"train": 1}
  assert failures(out, "train") == {"three.mp4": "missing"}
  with open(out / "labels.json") as f:
    assert json.load(f) == ["0", "1", "2"]
  records = read_records(out, "train")
  frames, label, _, rate = records[os.path.join("x", "one.mp4")]
  assert label == 2 and rate == 10.0
  assert nearest_sources(frames, source)[0] == [0, 2, 5, 7, 10, 12, 15, 17]
  assert len(records["two.webm"][0]) == 8


def test_annotation_errors_name_the_problem(tmp_path):
  (tmp_path / "v").mkdir()
  bad = tmp_path / "list.csv"
  with open(bad, "w") as f:
    f.write("a.mp4,walking\nb.mp4,3\n")
  with pytest.raises(ValueError, match="Cannot tell the split of .*list.csv.*<split>="):
    convert.list_videos("csv", str(tmp_path / "v"), [str(bad)])
  with pytest.raises(ValueError, match="mix integers and class names"):
    convert.list_videos("csv", str(tmp_path / "v"), [f"train={bad}"])
  with pytest.raises(ValueError, match="not a Kinetics CSV"):
    convert.list_videos("kinetics", str(tmp_path / "v"), [f"train={bad}"])
  with pytest.raises(ValueError, match="--format='hmdb'"):
    convert.list_videos("hmdb", str(tmp_path / "v"))
  with pytest.raises(ValueError, match="--examples_per_shard=0"):
    convert.convert(str(tmp_path / "o"), format="folders", video_root=str(tmp_path / "v"),
                    examples_per_shard=0)


def test_command_line_with_worker_processes(tmp_path):
  root = tmp_path / "clips"
  for i in range(4):
    write_video(root / f"train/class_{i % 2}/{i}.mp4", source_frames(8, i), "libx264")
  out = tmp_path / "shards"
  result = subprocess.run(
      [sys.executable, "-m", "vidtx.data.convert", "--format=folders",
       f"--video_root={root}", f"--output_dir={out}", "--examples_per_shard=2", "--workers=2",
       "--short_side=32"], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  with open(out / "metadata.json") as f:
    assert json.load(f)["shard_counts"] == {
        "train": {"train-00000-of-00002.tfrecord": 2, "train-00001-of-00002.tfrecord": 2}}
  assert len(read_records(out, "train")) == 4
