"""Tests of vidtx.data.check: a good conversion passes, broken ones fail naming the problem."""

import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from vidtx import configuration, errors
from vidtx.data import check, convert_videos, records


def write_video(path, seed, num_frames=12):
  """An H.264 mp4 of 48x64 noise frames at 25 fps."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 48, 64, 3), np.uint8)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Folders of 2 classes, 4 train and 2 validation videos of 12 frames, stored at 40x53."""
  root = tmp_path_factory.mktemp("videos")
  for i, split in enumerate(["train"] * 4 + ["val"] * 2):
    write_video(root / f"{split}/class_{i % 2}/{i}.mp4", seed=i)
  out = tmp_path_factory.mktemp("shards")
  convert_videos.convert(str(out), format="folders", video_root=str(root), short_side=40,
                         examples_per_shard=2, workers=1)
  return out


def data_config(data_dir, **overrides):
  cfg = configuration.base().data
  cfg.update(dict(name="converted", data_dir=str(data_dir), num_classes=2, num_frames=4,
                  frame_stride=2, min_resize=36, crop_size=32))
  cfg.update(overrides)
  return cfg


@pytest.fixture
def broken(converted, tmp_path):
  """A copy of the conversion to damage."""
  shutil.copytree(converted, tmp_path / "copy")
  return tmp_path / "copy"


def test_passes_on_a_good_conversion(converted):
  lines = []
  assert check.check(data_config(converted), out=lines.append) == {"train": 4, "validation": 2}
  text = "\n".join(lines)
  assert "label map labels.json: 2 classes: 0 'class_0', 1 'class_1'" in text
  assert "records: 4 counted, 4 in metadata.json" in text
  assert "records: 2 counted, 2 in metadata.json" in text
  assert "labels: 0..1, 2 of 2 classes present" in text
  assert "frames per record: min 12, median 12, max 12; 0 shorter than the 7-frame" in text
  assert text.count("12 frames of 40x53 at 25 fps") == 6
  assert "train processing: " in text and "eval processing: " in text
  train_line = text.split("train processing: ")[1].splitlines()[0]
  assert "video uint8 [4, 4, 32, 32, 3] min " in train_line
  assert float(train_line.split(" mean ")[-1]) > 10  # real pixels, not a black batch
  lines = []
  assert check.check(data_config(converted), ["validation"], num_examples=1, full=False,
                     out=lines.append) == {"validation": 1}
  assert "records: 2 in metadata.json (not counted: --nofull)" in lines


def test_fails_when_num_classes_is_too_small(converted, broken):
  with pytest.raises(check.CheckError, match=r"labels.json lists 2 classes, but config.data."
                     r"num_classes=1: set --config.data.num_classes=2"):
    check.check(data_config(converted, num_classes=1))
  os.remove(broken / "labels.json")
  with pytest.raises(check.CheckError, match=r"split 'train' has label 1, outside \[0, config."
                     r"data.num_classes=1\): set --config.data.num_classes=2"):
    check.check(data_config(broken, num_classes=1))


def test_fails_on_a_missing_shard(broken):
  os.remove(broken / "train-00001-of-00002.tfrecord")
  with pytest.raises(check.CheckError, match="split 'train' has 1 of its 2 shards; missing e.g. "
                     "train-00001-of-00002.tfrecord"):
    check.check(data_config(broken))
  shutil.rmtree(broken)
  with pytest.raises(errors.DataNotFoundError, match="does not exist"):
    check.check(data_config(broken))


def test_fails_on_zero_frames_and_wrong_counts(broken):
  shard = str(broken / "validation-00000-of-00001.tfrecord")
  jpeg = records.encode_jpeg(np.zeros((40, 53, 3), np.uint8), 90)
  records.write_records(shard, [records.make_example([jpeg] * 3, 0, "class_0"),
                                records.make_example([], 1, "class_1")])
  with pytest.raises(check.CheckError, match="validation-00000-of-00001.tfrecord: record 1 has "
                     "no frames"):
    check.check(data_config(broken), ["validation"])
  records.write_records(shard, [records.make_example([jpeg] * 3, 0, "class_0")])
  with pytest.raises(check.CheckError, match="has 1 records, but metadata.json says 2"):
    check.check(data_config(broken), ["validation"])
  records.write_records(shard, [records.make_example([jpeg] * 3, 0, "class_1")] * 2)
  with pytest.raises(check.CheckError, match="named 'class_1', but labels.json calls 0 "
                     "'class_0'"):
    check.check(data_config(broken), ["validation"])


def test_command_line(converted):
  result = subprocess.run(
      [sys.executable, "-m", "vidtx.data.check", "--config=configs/demo.py",
       f"--config.data.data_dir={converted}", "--config.data.num_classes=2",
       "--num_examples=2"], capture_output=True, text=True, timeout=300, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 0, result.stderr
  assert "OK: {'train': 4, 'validation': 2}" in result.stdout
  assert "records: 4 counted, 4 in metadata.json" in result.stdout
