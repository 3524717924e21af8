"""Training input throughput per CPU core: our TFRecord pipeline vs decoding each clip from mp4.

  python benchmarks/input_pipeline.py [--videos=16] [--seconds=10] [--clips=96] [--cores=1]

Writes `--videos` H.264 videos (456x256, 30 fps, `--seconds` long, moving shapes over noise,
like a short-side-256 Kinetics copy), converts them with `vidtx.data.convert_videos` (short side
256, JPEG 90), then, pinned to `--cores` cores, times `--clips` training clips of 16 frames 4 apart
at 224x224 through:
- vidtx: `vidtx.data.build` on the shards with the Kinetics fine-tuning augmentation of
  `configs/videomae_k400.py` (Inception crop, flip, RandAugment m7 n4, random erasing, 2 clips
  per video), float32 normalised clips, batches of 8;
- PyAV baseline: what PyTorch video loaders (PySlowFast, VideoMAE with PyAV) do per clip: open
  the mp4, seek before a random 64-frame window, decode up to its end, keep every 4th frame,
  random crop 224 + flip + normalise in numpy. Lighter augmentation than ours (no RandAugment or
  erasing), which favours the baseline.
Prints a markdown table: clips/s per core for each, and the cores one host needs to feed a
ViT-B 16x224 training step on an H100 and a TPU v4-8 at 45% MFU.
"""

import os
import tempfile
import time

import av
import numpy as np
from absl import app, flags

from vidtx import configuration, data
from vidtx.data import convert_videos

FLAGS = flags.FLAGS
flags.DEFINE_integer("videos", 16, "Videos to generate.")
flags.DEFINE_float("seconds", 10.0, "Length of each video.")
flags.DEFINE_integer("clips", 96, "Clips to time per pipeline (after a warm-up batch).")
flags.DEFINE_integer("cores", 1, "CPU cores to pin both pipelines to.")

FPS, WIDTH, HEIGHT = 30, 456, 256
NUM_FRAMES, STRIDE, CROP = 16, 4, 224
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# Training FLOPs per ViT-B 16x224 clip: forward + backward = 3 x 2 x 180.6 GMACs
# (vidtx.tools.flops; BENCHMARKS.md), and what one host needs at 45% MFU of its bf16 peak.
TRAIN_FLOP_PER_CLIP = 3 * 2 * 180.6e9
HOSTS = {"H100 (1 GPU, 989 TFLOP/s)": 989e12, "TPU v4-8 host (4 chips x 275 TFLOP/s)": 4 * 275e12}


def write_videos(folder: str, count: int, seconds: float) -> None:
  rng = np.random.default_rng(0)
  for i in range(count):
    os.makedirs(os.path.join(folder, "train", f"class{i % 4}"), exist_ok=True)
    background = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), np.uint8))
    path = os.path.join(folder, "train", f"class{i % 4}", f"{i}.mp4")
    with av.open(path, "w") as out:
      stream = out.add_stream("libx264", rate=FPS)
      stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
      for t in range(int(seconds * FPS)):
        frame = background.copy()
        x = (7 * t + 40 * i) % (WIDTH - 64)
        frame[60:124, x:x + 64] = (255, 64 * (i % 4), 0)
        frame += rng.integers(0, 8, frame.shape, dtype=np.uint8)  # camera noise
        out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
      out.mux(stream.encode())


def vidtx_clips_per_s(data_dir: str, clips: int) -> float:
  config = configuration.load("configs/videomae_k400.py")
  config.unlock()
  config.data.data_dir = data_dir
  batch_size = 8
  batches = data.build(config.data, "train", train=True, batch_size=batch_size, seed=0)
  next(batches)  # warm-up: graph construction, first files opened
  start = time.perf_counter()
  for _ in range(clips // batch_size):
    batch = next(batches)
  assert batch["video"].shape == (batch_size, NUM_FRAMES, CROP, CROP, 3)
  return (clips // batch_size) * batch_size / (time.perf_counter() - start)


def pyav_clip(path: str, rng: np.random.Generator) -> np.ndarray:
  """One training clip the way PyAV-based PyTorch loaders make it."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    total = stream.frames
    window = (NUM_FRAMES - 1) * STRIDE + 1
    start = int(rng.integers(0, total - window + 1))
    wanted = set(range(start, start + window, STRIDE))
    time_base, rate = stream.time_base, stream.average_rate
    container.seek(int(start / rate / time_base), stream=stream, backward=True, any_frame=False)
    frames = []
    for frame in container.decode(stream):
      index = int(round(frame.pts * time_base * rate))
      if index in wanted:
        frames.append(frame.to_ndarray(format="rgb24"))
      if index >= start + window - 1:
        break
  clip = np.stack(frames)
  top, left = rng.integers(0, HEIGHT - CROP + 1), rng.integers(0, WIDTH - CROP + 1)
  clip = clip[:, top:top + CROP, left:left + CROP]
  if rng.random() < 0.5:
    clip = clip[:, :, ::-1]
  return ((clip / 255.0 - MEAN) / STD).astype(np.float32)


def pyav_clips_per_s(folder: str, clips: int) -> float:
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                 for name in names if name.endswith(".mp4"))
  rng = np.random.default_rng(0)
  pyav_clip(paths[0], rng)  # warm-up
  start = time.perf_counter()
  for i in range(clips):
    clip = pyav_clip(paths[i % len(paths)], rng)
  assert clip.shape == (NUM_FRAMES, CROP, CROP, 3)
  return clips / (time.perf_counter() - start)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    videos, shards = os.path.join(tmp, "videos"), os.path.join(tmp, "shards")
    write_videos(videos, FLAGS.videos, FLAGS.seconds)
    convert_videos.convert(shards, format="folders", video_root=videos, examples_per_shard=4)
    os.sched_setaffinity(0, set(range(FLAGS.cores)))  # threads started from here on inherit it
    ours = vidtx_clips_per_s(shards, FLAGS.clips) / FLAGS.cores
    baseline = pyav_clips_per_s(videos, FLAGS.clips) / FLAGS.cores
  print(f"\n{FLAGS.videos} videos of {FLAGS.seconds:.0f} s, {WIDTH}x{HEIGHT} {FPS} fps H.264; "
        f"clips of {NUM_FRAMES}x{CROP}, stride {STRIDE}; {FLAGS.cores} core(s)\n")
  print("| pipeline | clips/s per core |\n|---|---|")
  print(f"| vidtx TFRecords, full augmentation | {ours:.1f} |")
  print(f"| PyAV decode per clip, crop + flip only | {baseline:.1f} |")
  print(f"| ratio vidtx / PyAV | {ours / baseline:.2f} |\n")
  print("| to feed ViT-B 16x224 at 45% MFU | clips/s | cores (vidtx) | cores (PyAV) |")
  print("|---|---|---|---|")
  for host, peak in HOSTS.items():
    need = 0.45 * peak / TRAIN_FLOP_PER_CLIP
    print(f"| {host} | {need:.0f} | {need / ours:.0f} | {need / baseline:.0f} |")


if __name__ == "__main__":
  app.run(main)
