import csv
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_readme_starts_with_the_demo_and_test_commands():
  demo, tests = readme_commands()[:2]
  assert "pip install -e ." in demo and "vidtx.main --config=configs/demo.py" in demo
  assert "pip install -q -e '.[test,torch]'" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert readme_commands()[1] in ci.splitlines()


# --- Training on your own videos ---------------------------------------------------------------

CLASSES = ["clapping", "jumping", "running", "sitting", "walking", "waving"]  # the README's 6
# Appended to the training command: a 1-block model for 2 steps, so that it runs in seconds.
TINY_TRAINING = ["--config.model.width=32", "--config.model.depth=1",
                 "--config.model.num_heads=4", "--config.total_steps=2", "--config.batch_size=4",
                 "--config.optim.warmup_steps=1", "--config.eval_every_steps=0"]


def own_videos_commands():
  """The README's commands from a folder of videos to attention maps, as argument lists."""
  block = next(b for b in readme_commands() if "vidtx.data.convert_videos --format=folders" in b)
  lines = block.replace("\\\n", " ").splitlines()
  return [shlex.split(line) for line in lines if not line.startswith("#")]


def write_videos(root):
  """my_videos/<split>/<class>/<n>.mp4: two short training videos per class, one validation
  video, made as the video reader's tests make theirs."""
  path = os.path.join(ROOT, "tests", "data", "test_video_files.py")
  spec = importlib.util.spec_from_file_location("test_video_files", path)
  video_files = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(video_files)
  for split, count in (("train", 2), ("validation", 1)):
    for label, name in enumerate(CLASSES):
      for i in range(count):
        video_files.write_video(os.path.join(root, split, name, f"{i + 1}.mp4"),
                                video_files.source_frames(12, 2 * i + label), "libx264")


def test_own_videos_commands_run(tmp_path):
  """The README's commands run as written in a directory holding my_videos/ (and configs/),
  training a tiny model for 2 steps."""
  write_videos(str(tmp_path / "my_videos"))
  os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
  commands = own_videos_commands()
  assert [c[:3] for c in commands] == [
      ["python", "-m", module] for module in ("vidtx.data.convert_videos", "vidtx.data.check",
                                              "vidtx.main", "vidtx.predict",
                                              "vidtx.tools.visualize_attention")]
  for command in commands:
    extra = TINY_TRAINING if command[2] == "vidtx.main" else []
    result = subprocess.run([sys.executable, *command[1:], *extra], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (command, result.stderr[-3000:])

  with open(tmp_path / "my_videos_tfrecords" / "labels.json") as f:
    assert json.load(f) == CLASSES
  with open(tmp_path / "runs" / "mine" / "eval_metrics.json") as f:
    assert json.load(f)["num_examples"] == len(CLASSES)
  with open(tmp_path / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  videos = tmp_path / "my_videos" / "validation"
  assert sorted(os.path.relpath(tmp_path / r["path"], videos) for r in rows) == [
      f"{name}/1.mp4" for name in CLASSES]
  assert all(r["label_1"] in CLASSES and not r["error"] for r in rows)
  assert (tmp_path / "runs" / "mine" / "attention.png").is_file()
  assert (tmp_path / "runs" / "mine" / "attention.gif").is_file()
