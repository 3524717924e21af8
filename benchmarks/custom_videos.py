"""Your own videos, end to end: FFmpeg-made camera-motion videos, converted, trained, timed.

  python benchmarks/custom_videos.py --out=/tmp/cm [--config=configs/custom.py] [-- --config.X=Y]

Runs the commands a user runs, each as its own process: benchmarks/camera_motion_videos.py
(skipped when <out>/videos exists), vidtx.data.convert_videos (skipped when <out>/tfrecords
exists), then vidtx.main in a fresh <out>/runs/<config name>. Prints each command, its wall time
and the validation top-1; the recipe's figures are in BENCHMARKS.md ("Your own videos").
Arguments after `--` go to vidtx.main.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(command: list[str]) -> float:
  """Runs `command` (its output to ours) and returns its wall time in seconds."""
  print("$", " ".join(command), flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  seconds = time.perf_counter() - start
  print(f"took {seconds // 60:.0f} min {seconds % 60:.0f} s", flush=True)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs",
                                                       "custom.py"))
  parser.add_argument("--train", type=int, default=40, help="videos per class")
  parser.add_argument("--val", type=int, default=20, help="videos per class")
  parser.add_argument("--seed", type=int, default=0, help="of the videos")
  parser.add_argument("--short_side", type=int, default=64, help="of the stored frames")
  args, overrides = parser.parse_known_args()
  overrides = [o for o in overrides if o != "--"]
  videos, shards = os.path.join(args.out, "videos"), os.path.join(args.out, "tfrecords")
  if not os.path.isdir(videos):
    timed([sys.executable, os.path.join(HERE, "camera_motion_videos.py"), f"--out={videos}",
           f"--train={args.train}", f"--val={args.val}", f"--seed={args.seed}"])
  if not os.path.isdir(shards):
    timed([sys.executable, "-m", "vidtx.data.convert_videos", "--format=folders",
           f"--video_root={videos}", f"--output_dir={shards}",
           f"--short_side={args.short_side}"])
  with open(os.path.join(shards, "labels.json")) as f:
    num_classes = len(json.load(f))
  workdir = os.path.join(args.out, "runs", os.path.splitext(os.path.basename(args.config))[0])
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resume
  seconds = timed([sys.executable, "-m", "vidtx.main", f"--config={args.config}",
                   f"--workdir={workdir}", f"--config.data.data_dir={shards}",
                   f"--config.data.num_classes={num_classes}", *overrides])
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    metrics = json.load(f)
  print(f"{args.config}: validation top-1 {metrics['top1']:.1%} over "
        f"{metrics['num_examples']:.0f} videos after {metrics['step']} steps; vidtx.main took "
        f"{seconds // 60:.0f} min {seconds % 60:.0f} s")


if __name__ == "__main__":
  main()
