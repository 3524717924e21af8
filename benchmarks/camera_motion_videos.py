"""Writes a folder of camera-motion videos with FFmpeg, as a user's own small dataset.

  python benchmarks/camera_motion_videos.py --out=/tmp/camera_motion [--train=40 --val=10]

Six classes, `<out>/<split>/<class>/<video>`: the camera pans left, right, up or down, or zooms
in or out, over a still scene. Each video gets its own scene (a random picture of shapes, or one
of FFmpeg's generated patterns at a random place and scale), speed, length (2-4 s), frame size
(320x240 to 640x360), frame rate (15, 24 or 30) and container/codec (mp4/H.264, webm/VP9,
avi/MPEG-4, mkv/H.264), as videos users collect do. `vidtx.data.convert_videos --format=folders`
reads the result. Needs the `ffmpeg` command (Debian: `apt-get install ffmpeg`).
"""

import argparse
import concurrent.futures
import os
import random
import subprocess
import tempfile
import zlib

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")
FORMATS = ((".mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
           (".webm", ["-c:v", "libvpx-vp9", "-b:v", "400k"]),
           (".avi", ["-c:v", "mpeg4", "-q:v", "5"]),
           (".mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]))
SIZES = ((320, 240), (480, 360), (640, 360))
RATES = (15, 24, 30)
PATTERNS = ("mandelbrot", "cellauto", "testsrc2", "life=ratio=0.2:mold=10")


def scene(rng: random.Random, width: int, height: int, path: str) -> None:
  """A still scene twice the frame's size, so the camera can travel over it."""
  w, h = 2 * width, 2 * height
  if rng.random() < 0.5:
    image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(20, 60)):
      x, y = rng.randrange(w), rng.randrange(h)
      r = rng.randrange(8, max(9, h // 6))
      colour = tuple(rng.randrange(256) for _ in range(3))
      shape = rng.choice((draw.ellipse, draw.rectangle))
      shape((x - r, y - r, x + r, y + r), fill=colour)
    noise = np.random.default_rng(rng.randrange(2**31)).integers(-12, 12, (h, w, 3))
    image = Image.fromarray(np.clip(np.asarray(image, int) + noise, 0, 255).astype(np.uint8))
    image.save(path)
  else:
    pattern = rng.choice(PATTERNS)
    options = f"{':' if '=' in pattern else '='}s={w}x{h}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", pattern + options,
                    "-frames:v", "1", path], check=True)


def camera(label: str, width: int, height: int, frames: int, rate: int,
           rng: random.Random) -> str:
  """The FFmpeg filter that moves a width x height camera over a 2x scene for `label`."""
  travel = rng.uniform(0.5, 1.0)  # of the scene's spare width/height crossed
  progress = f"(n/{frames - 1})"
  if label.startswith("pan"):
    x0, y0 = rng.uniform(0, 1 - travel), rng.uniform(0, 1 - travel)
    fx = {"pan_left": f"({x0 + travel:.3f}-{travel:.3f}*{progress})",
          "pan_right": f"({x0:.3f}+{travel:.3f}*{progress})"}.get(label, f"{rng.random():.3f}")
    fy = {"pan_up": f"({y0 + travel:.3f}-{travel:.3f}*{progress})",
          "pan_down": f"({y0:.3f}+{travel:.3f}*{progress})"}.get(label, f"{rng.random():.3f}")
    # Panning left: the camera turns left, so the scene's view moves towards smaller x.
    return f"crop={width}:{height}:'(iw-{width})*{fx}':'(ih-{height})*{fy}'"
  # Zoom: a window shrinking (in) or growing (out) about a random centre, scaled to the frame
  # (zoompan: crop's size is fixed, its position is not).
  zoom = rng.uniform(1.6, 2.0)
  step = f"(on/{frames - 1})"
  level = (f"1+{zoom - 1:.3f}*{step}" if label == "zoom_in" else f"{zoom:.3f}-{zoom - 1:.3f}*{step}")
  cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
  return (f"zoompan=z='{level}':x='(iw-iw/zoom)*{cx:.3f}':y='(ih-ih/zoom)*{cy:.3f}':d=1:"
          f"s={width}x{height}:fps={rate}")


def write_video(out: str, split: str, label: str, index: int, seed: int) -> str:
  rng = random.Random(seed)
  width, height = rng.choice(SIZES)
  rate, seconds = rng.choice(RATES), rng.uniform(2.0, 4.0)
  frames = round(rate * seconds)
  extension, codec = rng.choice(FORMATS)
  folder = os.path.join(out, split, label)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{label}_{index:04d}{extension}")
  with tempfile.TemporaryDirectory() as tmp:
    still = os.path.join(tmp, "scene.png")
    scene(rng, width, height, still)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", str(rate),
                    "-i", still, "-frames:v", str(frames), "-vf",
                    camera(label, width, height, frames, rate, rng), *codec, path], check=True)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--train", type=int, default=40, help="videos per class")
  parser.add_argument("--val", type=int, default=10, help="videos per class")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  args = parser.parse_args()
  jobs = [(split, label, i) for split, count in (("train", args.train), ("val", args.val))
          for label in CLASSES for i in range(count)]
  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    paths = list(pool.map(
        lambda job: write_video(args.out, *job, seed=zlib.crc32(repr((args.seed, job)).encode())),
        jobs))
  print(f"wrote {len(paths)} videos to {args.out}")


if __name__ == "__main__":
  main()
