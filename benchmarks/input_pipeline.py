"""Training input throughput per CPU core: our TFRecord pipeline vs decoding each clip from mp4.

  python benchmarks/input_pipeline.py [--data_dir=/tmp/vidtx_input_pipeline] [--rounds=3]
      [--warmup=8] [--batches=32] [--core=0]

Writes 16 H.264 videos (456x256, 30 fps, 10 s, moving shapes over noise, like a short-side-256
Kinetics copy) and converts them with `vidtx.data.convert_videos` (short side 256, JPEG 90) into
--data_dir, once: a later run reuses them. Then times, each in a fresh process pinned to CPU
--core before it starts (so TensorFlow's thread pools see one core), `--warmup` batches of 8
clips untimed and the next `--batches` timed, for:
- `k400_host`: `vidtx.data.build` with `configs/videomae_k400.py`'s fine-tuning augmentation
  (16 frames 4 apart, Inception crop 224, flip, RandAugment m7 n4, 2 clips per record) with
  data.host_augment=True: all of it on the host, uint8 clips out (normalising and random
  erasing are always the device's);
- `k400`: the same with the default data.host_augment=False: RandAugment runs in the train
  step on the accelerator, the host decodes, crops and flips;
- `ssv2_host`, `ssv2`: the same two with `configs/mar_ssv2.py`'s data (segment sampling);
- `pyav`: what PyTorch video loaders (PySlowFast, VideoMAE with PyAV) do per clip: open the
  mp4, seek before a random 61-frame window, decode to its end, keep every 4th frame, random crop
  224 + flip + normalise in numpy. Lighter augmentation than ours (no RandAugment), which
  favours the baseline.
The three alternate for --rounds rounds, so a drift in the machine's speed reaches all alike.
Prints a markdown table: the median (and range) clips/s per core of each, their ratio, and the
cores one host needs to feed a ViT-B 16x224 training step on an H100 and a TPU v4-8 at 45% MFU.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "/tmp/vidtx_input_pipeline", "Where the videos and shards are "
                    "written once and reused.")
flags.DEFINE_integer("rounds", 3, "Rounds of the pipelines, alternated.")
flags.DEFINE_integer("warmup", 8, "Batches of 8 clips before timing (tracing, XLA compiles, "
                     "buffers filling).")
flags.DEFINE_integer("batches", 32, "Batches of 8 clips timed.")
flags.DEFINE_integer("core", 0, "The CPU core every timed process is pinned to.")
flags.DEFINE_string("measure", None, "Internal: time one pipeline in this process.")

VIDEOS, SECONDS, FPS, WIDTH, HEIGHT = 16, 10.0, 30, 456, 256
NUM_FRAMES, STRIDE, CROP, BATCH = 16, 4, 224, 8
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# Training FLOPs per ViT-B 16x224 clip: forward + backward = 3 x 2 x 180.6 GMACs
# (vidtx.tools.flops; BENCHMARKS.md), and what one host needs at 45% MFU of its bf16 peak.
TRAIN_FLOP_PER_CLIP = 3 * 2 * 180.6e9
HOSTS = {"H100 (1 GPU, 989 TFLOP/s)": 989e12, "TPU v4-8 host (4 chips x 275 TFLOP/s)": 4 * 275e12}
PIPELINES = {  # name: (config, data.host_augment, what)
    "k400_host": ("configs/videomae_k400.py", True, "vidtx Kinetics, all augmentation on the host"),
    "k400": ("configs/videomae_k400.py", False, "vidtx Kinetics, RandAugment on the device"),
    "ssv2_host": ("configs/mar_ssv2.py", True, "vidtx SSv2, all augmentation on the host"),
    "ssv2": ("configs/mar_ssv2.py", False, "vidtx SSv2, RandAugment on the device"),
    "pyav": (None, None, "PyAV decode per clip, crop + flip only"),
}


def write_videos(folder: str) -> None:
  import av  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(VIDEOS):
    os.makedirs(os.path.join(folder, "train", f"class{i % 4}"), exist_ok=True)
    background = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), np.uint8))
    path = os.path.join(folder, "train", f"class{i % 4}", f"{i}.mp4")
    with av.open(path, "w") as out:
      stream = out.add_stream("libx264", rate=FPS)
      stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
      for t in range(int(SECONDS * FPS)):
        frame = background.copy()
        x = (7 * t + 40 * i) % (WIDTH - 64)
        frame[60:124, x:x + 64] = (255, 64 * (i % 4), 0)
        frame += rng.integers(0, 8, frame.shape, dtype=np.uint8)  # camera noise
        out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
      out.mux(stream.encode())


def prepare(data_dir: str) -> None:
  """The videos and their shards in data_dir, made unless a finished run left them there."""
  from vidtx.data import convert_videos  # pylint: disable=g-import-not-at-top
  done = os.path.join(data_dir, "done")
  if os.path.exists(done):
    return
  print(f"Writing {VIDEOS} videos and converting them into {data_dir} (once)...", flush=True)
  videos, shards = os.path.join(data_dir, "videos"), os.path.join(data_dir, "shards")
  write_videos(videos)
  convert_videos.convert(shards, format="folders", video_root=videos, examples_per_shard=4)
  open(done, "w").close()


def vidtx_batch_times(config_path: str, host_augment: bool, shards: str,
                      batches: int) -> list[float]:
  from vidtx import configuration, data  # pylint: disable=g-import-not-at-top
  config = configuration.load(config_path)
  config.unlock()
  config.data.data_dir, config.data.num_classes = shards, 4
  config.data.host_augment = host_augment
  stream = data.build(config.data, "train", train=True, batch_size=BATCH, seed=0)
  times = []
  for _ in range(batches):
    batch = next(stream)
    times.append(time.perf_counter())
  assert batch["video"].shape == (BATCH, NUM_FRAMES, CROP, CROP, 3), batch["video"].shape
  return times


def pyav_clip(path: str, rng: np.random.Generator) -> np.ndarray:
  """One training clip the way PyAV-based PyTorch loaders make it."""
  import av  # pylint: disable=g-import-not-at-top
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


def pyav_batch_times(videos: str, batches: int) -> list[float]:
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(videos)
                 for name in names if name.endswith(".mp4"))
  rng = np.random.default_rng(0)
  times = []
  for b in range(batches):
    clips = [pyav_clip(paths[(b * BATCH + i) % len(paths)], rng) for i in range(BATCH)]
    times.append(time.perf_counter())
  assert clips[0].shape == (NUM_FRAMES, CROP, CROP, 3)
  return times


def measure(name: str) -> None:
  """Times one pipeline in this (pinned) process; prints its clips/s as one JSON line."""
  total = FLAGS.warmup + FLAGS.batches
  config_path, host_augment, _ = PIPELINES[name]
  if config_path:
    times = vidtx_batch_times(config_path, host_augment, os.path.join(FLAGS.data_dir, "shards"),
                              total)
  else:
    times = pyav_batch_times(os.path.join(FLAGS.data_dir, "videos"), total)
  timed = times[FLAGS.warmup - 1:]  # from the end of the warm-up to the last batch
  print(json.dumps({"clips_per_s": BATCH * (len(timed) - 1) / (timed[-1] - timed[0])}))


def run_pinned(name: str) -> float:
  command = [sys.executable, os.path.abspath(__file__), f"--measure={name}",
             f"--data_dir={FLAGS.data_dir}", f"--warmup={FLAGS.warmup}",
             f"--batches={FLAGS.batches}"]
  out = subprocess.run(command, check=True, capture_output=True, text=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {FLAGS.core}))
  return json.loads(out.stdout.strip().splitlines()[-1])["clips_per_s"]


def main(argv):
  del argv
  if FLAGS.warmup < 1 or FLAGS.batches < 2:
    raise app.UsageError("--warmup must be at least 1 and --batches at least 2")
  if FLAGS.measure:
    measure(FLAGS.measure)
    return
  prepare(FLAGS.data_dir)
  rates = {name: [] for name in PIPELINES}
  for r in range(FLAGS.rounds):
    for name in PIPELINES:
      rates[name].append(run_pinned(name))
      print(f"round {r + 1}: {name} {rates[name][-1]:.1f} clips/s", flush=True)
  median = {name: statistics.median(values) for name, values in rates.items()}
  print(f"\n{VIDEOS} videos of {SECONDS:.0f} s, {WIDTH}x{HEIGHT} {FPS} fps H.264; clips of "
        f"{NUM_FRAMES}x{CROP}; each pipeline in a fresh process pinned to core {FLAGS.core}; "
        f"{FLAGS.batches} batches of {BATCH} timed after {FLAGS.warmup}; {FLAGS.rounds} "
        "rounds\n")
  print("| pipeline | clips/s per core, median (range) |\n|---|---|")
  for name, (_, _, what) in PIPELINES.items():
    print(f"| {what} | {median[name]:.1f} ({min(rates[name]):.1f}-{max(rates[name]):.1f}) |")
  for name in ("k400_host", "k400"):
    print(f"| ratio {PIPELINES[name][2]} / PyAV | {median[name] / median['pyav']:.2f} |")
  print("\n| to feed ViT-B 16x224 at 45% MFU | clips/s | cores (vidtx, all on the host) | "
        "cores (vidtx, RandAugment on the device) | cores (PyAV) |")
  print("|---|---|---|---|---|")
  for host, peak in HOSTS.items():
    need = 0.45 * peak / TRAIN_FLOP_PER_CLIP
    cores = [need / median[name] for name in ("k400_host", "k400", "pyav")]
    print(f"| {host} | {need:.0f} | " + " | ".join(f"{n:.0f}" for n in cores) + " |")


if __name__ == "__main__":
  app.run(main)
