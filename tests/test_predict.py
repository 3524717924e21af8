"""predict: a video file through the evaluation preprocessing gives evaluation's probabilities."""

import csv
import io
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest

from test_train import ROOT, untrained_run
from vidtx import builder, configuration, data, predict
from vidtx.data import on_device

CLASSES = ("left", "right")


def write_mp4(path, seed, num_frames=12):
  """An H.264 clip of a square moving over noise, 48x64."""
  rng = np.random.default_rng(seed)
  background = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for t in range(num_frames):
      frame = background.copy()
      frame[10:26, 4 * t:4 * t + 16] = 255
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Videos converted into a dataset, and a run on it (random weights, 2 clips x 3 crops)."""
  videos = tmp_path_factory.mktemp("videos")
  for split in ("train", "validation"):
    for label in CLASSES:
      os.makedirs(videos / split / label)
      write_mp4(videos / split / label / "a.mp4", seed=len(label))
  data_dir = str(tmp_path_factory.mktemp("converted"))
  from vidtx.data import convert_videos
  convert_videos.convert(data_dir, format="folders", video_root=str(videos), short_side=40,
                         workers=1)
  config = configuration.base()
  config.update_from_flattened_dict({
      "model.width": 32, "model.depth": 2, "model.num_heads": 4, "model.patch_size": (2, 8, 8),
      "model.vit.pos_embed": "learned", "data.name": "custom", "data.data_dir": data_dir,
      "data.num_classes": 2, "data.num_frames": 4, "data.frame_stride": 2,
      "data.min_resize": 40, "data.eval_clips": 2, "data.eval_crops": 3, "batch_size": 2,
      "optim.warmup_steps": 1, "total_steps": 2})
  workdir = str(tmp_path_factory.mktemp("run"))
  untrained_run(config, workdir, step=3)
  return workdir, config, videos


def test_a_video_file_gets_the_probabilities_evaluation_gives_its_record(run):
  workdir, config, videos = run
  predictor = predict.Predictor(config, workdir)
  assert predictor.conversion["short_side"] == 40  # from the dataset's metadata.json
  assert predictor.labels == list(CLASSES)
  # Evaluation's views of the converted records (folders are sorted: left, right), and the
  # model's mean softmax over them.
  batch = next(data.build(config.data, "validation", train=False, batch_size=2, seed=0))
  assert batch["video"].shape == (2, 6, 4, 32, 32, 3)
  model, _ = builder.restore_model(config, workdir)
  for i, label in enumerate(CLASSES):
    path = str(videos / "validation" / label / "a.mp4")
    views = on_device.eval_clips(config.data, batch["video"][i])  # as the eval step sees them
    np.testing.assert_allclose(predictor.views(path), views, atol=1e-6)
    logits, _ = model(views, train=False)
    expected = np.asarray(jax.nn.softmax(logits).mean(0))
    probabilities = predictor.predict(path)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
    best = predictor.top_k(probabilities, 2)
    assert best[0] == (CLASSES[int(np.argmax(expected))], pytest.approx(float(expected.max())))


def test_a_folder_gives_a_csv_with_failures_in_their_rows(run, tmp_path):
  workdir, config, videos = run
  (tmp_path / "broken.mp4").write_bytes(b"not a video" * 100)
  write_mp4(tmp_path / "good.mp4", seed=3)
  out = io.StringIO()
  done, failed = predict.predict_folder(predict.Predictor(config, workdir), str(tmp_path), out,
                                        k=1)
  assert (done, failed) == (1, 1)
  rows = list(csv.reader(io.StringIO(out.getvalue())))
  assert rows[0] == ["path", "label_1", "prob_1", "error"]
  assert rows[1][0].endswith("broken.mp4") and rows[1][3].startswith("corrupt")
  assert rows[2][0].endswith("good.mp4") and rows[2][1] in CLASSES and rows[2][3] == ""


def test_the_command_names_a_bad_file_without_a_traceback(run, tmp_path):
  workdir, _, videos = run
  (tmp_path / "broken.mp4").write_bytes(b"not a video" * 100)
  good = subprocess.run([sys.executable, "-m", "vidtx.predict", f"--workdir={workdir}",
                         f"--video={videos}/train/right/a.mp4", "--top_k=2"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert good.returncode == 0, good.stderr[-2000:]
  lines = good.stdout.splitlines()
  assert len(lines) == 2 and {line.split()[1] for line in lines} == set(CLASSES)
  bad = subprocess.run([sys.executable, "-m", "vidtx.predict", f"--workdir={workdir}",
                        f"--video={tmp_path}/broken.mp4"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert f"error: {tmp_path}/broken.mp4: corrupt" in bad.stderr
