"""Synthetic "motion" video dataset whose classes can only be told apart by temporal order.

Every clip shows one object on a textured background. Classes come in pairs, and the second
class of a pair is exactly the time reversal of the first (same random parameters, same noise),
so a model that ignores frame order is at chance within every pair.
"""

import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import os
import socket

from absl import logging
import numpy as np

from vidtx import errors
from vidtx.data import records

CLASSES = (
    "move_left", "move_right", "move_up", "move_down",
    "fade_in", "fade_out", "grow", "shrink",
)
SPLITS = {"train": 0, "validation": 1}  # split name -> id mixed into every clip seed
METADATA = records.METADATA
# Bump when the generator changes, so existing data dirs are detected as stale.
GENERATOR_VERSION = 3
JPEG_QUALITY = 90
# Written first into a data dir and removed once metadata.json is there: a directory that has
# it holds an unfinished generation that prepare() may finish, and only such a directory.
GENERATING = ".generating_synthetic_motion"
# Generating a clip takes ~6 ms, starting a worker process ~7 s (it imports TF): below this
# many clips per worker, more workers do not pay for themselves.
CLIPS_PER_WORKER = 1000


# Object shapes as indicator functions of local coordinates (u, v) in [-1, 1]^2 (v points down).
def _square(u, v):
  return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _disc(u, v):
  return u * u + v * v <= 1.0


def _triangle(u, v):  # equilateral, pointing up
  return (v <= 0.5) & (1.732 * u - v <= 1.0) & (-1.732 * u - v <= 1.0)


def _cross(u, v):
  return ((np.abs(u) <= 1) & (np.abs(v) <= 0.3)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1))


def _ell(u, v):
  return ((u <= -0.3) & (np.abs(u) <= 1) & (np.abs(v) <= 1)) | (
      (v >= 0.3) & (v <= 1) & (np.abs(u) <= 1))


def _tee(u, v):
  return ((v <= -0.4) & (v >= -1) & (np.abs(u) <= 1)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1))


def _wedge(u, v):  # tall isosceles triangle
  return (v <= 1) & (np.abs(u) <= 0.3 * (v + 1))


SHAPES = (_square, _disc, _triangle, _cross, _ell, _tee, _wedge)


def _upsample(grid, size):
  """Bilinearly upsamples a [k, k, C] grid to [size, size, C] (numpy only)."""
  k = grid.shape[0]
  pos = np.linspace(0, k - 1, size)
  i0 = np.minimum(np.floor(pos).astype(int), k - 2)
  w = (pos - i0)[:, None]
  rows = grid[i0] * (1 - w[..., None]) + grid[i0 + 1] * w[..., None]  # [size, k, C]
  return rows[:, i0] * (1 - w[None]) + rows[:, i0 + 1] * w[None]


def _trajectory(rng, pair, num_frames, size):
  """Per-frame centre, angle, radius and opacity of the object for the FIRST class of `pair`."""
  t = np.arange(num_frames, dtype=np.float64)
  steps = max(num_frames - 1, 1)
  radius = rng.uniform(4.5, 7.0)
  angle = rng.uniform(0, 2 * np.pi)
  if pair in (0, 1):  # move_left (x decreases) / move_up (y decreases)
    # The centre stays in [radius/2, size - radius/2]: the object is at least ~half visible.
    travel_max = size - radius
    speed = min(rng.uniform(1.0, 2.5), travel_max / steps)
    slack = max(travel_max - speed * steps, 0.0)
    start = size - radius / 2 - rng.uniform() * slack
    along = start - speed * t
    across = np.full_like(t, rng.uniform(radius, size - radius))
    cx, cy = (along, across) if pair == 0 else (across, along)
    return cx, cy, np.full_like(t, angle), np.full_like(t, radius), np.ones_like(t)
  if pair == 2:  # fade_in: the object's opacity ramps up from faint to solid
    opacity = np.linspace(rng.uniform(0.0, 0.2), rng.uniform(0.9, 1.0), num_frames)
    cx, cy = rng.uniform(radius, size - radius, size=2)
    return (np.full_like(t, cx), np.full_like(t, cy), np.full_like(t, angle),
            np.full_like(t, radius), opacity)
  # grow: the radius is multiplied by `rate` every frame and ends at r_end.
  rate = rng.uniform(1.03, 1.07)
  r_end = rng.uniform(0.3, 0.42) * size
  cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
  return (np.full_like(t, cx), np.full_like(t, cy), np.full_like(t, angle),
          r_end / rate**(steps - t), np.ones_like(t))


def generate_clip(seed, label, *, num_frames=16, size=40, return_mask=False):
  """Renders one clip as uint8 [num_frames, size, size, 3] (and the object mask if asked).

  `seed` is anything `np.random.default_rng` accepts (e.g. (dataset_seed, split_id, index)).
  The random parameters depend only on the seed and the class *pair*, and the second class of
  a pair is the first one reversed in time:
  generate_clip(s, 2k + 1) == generate_clip(s, 2k)[::-1].
  """
  if not 0 <= label < len(CLASSES):
    raise ValueError(f"label={label} is out of range; expected 0..{len(CLASSES) - 1}.")
  if num_frames < 2 or size < 16:
    raise ValueError(f"Need num_frames >= 2 and size >= 16, got num_frames={num_frames}, "
                     f"size={size}; change config.data.synthetic.")
  pair = label // 2
  rng = np.random.default_rng(seed)
  shape = SHAPES[rng.integers(len(SHAPES))]

  # Low-frequency colour noise background, and an object colour that stands out from it.
  base = rng.uniform(0.15, 0.85, size=3)
  background = base + 0.5 * (_upsample(rng.uniform(size=(5, 5, 3)), size) - 0.5)
  for _ in range(20):
    colour = rng.uniform(size=3)
    if np.linalg.norm(colour - base) > 0.5:
      break

  cx, cy, angle, radius, opacity = (
      a[:, None, None] for a in _trajectory(rng, pair, num_frames, size))
  y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
  dx, dy = x - cx, y - cy
  cos, sin = np.cos(angle), np.sin(angle)
  mask = shape((cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius)  # [T, S, S]

  noise = rng.normal(scale=rng.uniform(0.0, 0.03), size=(num_frames, size, size, 3))
  alpha = mask[..., None] * opacity[..., None]
  frames = background + alpha * (colour - background) + noise
  frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)
  if label % 2:  # second class of the pair: time reversal of the first
    frames, mask = frames[::-1], mask[::-1]
  return (frames, mask) if return_mask else frames


def clip_label(index):
  """Labels cycle through the classes so every split is balanced."""
  return index % len(CLASSES)


def make_sequence_example(frames, label, label_string=""):
  """Encodes uint8 frames [T, H, W, 3] as a DMVR-layout tf.train.SequenceExample."""
  # Full-resolution chroma: subsampling would blur the colour edges of tiny objects.
  return records.make_example(
      [records.encode_jpeg(f, JPEG_QUALITY, full_chroma=True) for f in frames], label,
      label_string)


def generation_params(*, num_train, num_val, num_frames=16, size=40, seed=0, num_shards=8):
  """The parameters that fully determine a generated dataset (stored in metadata.json)."""
  return dict(num_train=int(num_train), num_val=int(num_val), num_frames=int(num_frames),
              size=int(size), seed=int(seed), num_shards=int(num_shards),
              version=GENERATOR_VERSION)


def write_dataset(data_dir, *, num_train, num_val, num_frames=16, size=40, seed=0, num_shards=8):
  """Generates the dataset into `data_dir` as TFRecord shards plus metadata.json (written last).

  Clip i of a split has label i % 8 and seed (seed, split_id, i); shard k holds a contiguous
  range of clips. Each split gets min(num_shards, count) shards.
  """
  params = generation_params(num_train=num_train, num_val=num_val, num_frames=num_frames,
                             size=size, seed=seed, num_shards=num_shards)
  if num_shards < 1 or num_train < 1 or num_val < 1:
    raise ValueError(f"Need num_train, num_val and num_shards >= 1, got {params}; "
                     "change config.data.synthetic.")
  os.makedirs(data_dir, exist_ok=True)
  open(os.path.join(data_dir, GENERATING), "w").close()
  metadata = dict(name="synthetic_motion", classes=list(CLASSES), splits={}, shard_counts={},
                  generation=params)
  jobs = []
  for split, count in (("train", num_train), ("validation", num_val)):
    shards = min(num_shards, count)
    names = [records.shard_name(split, k, shards) for k in range(shards)]
    records.remove_stale_shards(data_dir, split, keep=names)
    bounds = np.linspace(0, count, shards + 1).astype(int)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
      jobs.append((os.path.join(data_dir, name), SPLITS[split], int(lo), int(hi)))
      metadata["shard_counts"].setdefault(split, {})[name] = int(hi - lo)
    metadata["splits"][split] = int(count)

  # One shard per task on all cores; small datasets in this process. Spawned, not forked:
  # TF's threads do not survive a fork.
  workers = min(len(jobs), os.cpu_count() or 1, (num_train + num_val) // CLIPS_PER_WORKER)
  write = functools.partial(_write_shard, seed=seed, num_frames=num_frames, size=size)
  if workers > 1:
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
    run_all = pool.map  # re-raises a worker's error when its result comes up
  else:
    pool, run_all = contextlib.nullcontext(), map
  with pool:
    for done, _ in enumerate(run_all(write, *zip(*jobs)), 1):
      logging.info("Generated %d/%d shards", done, len(jobs))

  with open(os.path.join(data_dir, records.LABELS), "w") as f:  # class names, index = label
    json.dump(list(CLASSES), f)
  # metadata.json marks the dataset as complete, so it goes last and atomically.
  tmp = os.path.join(data_dir, f".tmp-{socket.gethostname()}-{os.getpid()}-{METADATA}")
  with open(tmp, "w") as f:
    json.dump(metadata, f, indent=2)
  os.replace(tmp, os.path.join(data_dir, METADATA))
  os.remove(os.path.join(data_dir, GENERATING))
  return metadata


def _write_shard(path, split_id, lo, hi, *, seed, num_frames, size):
  """Writes clips lo..hi-1 of a split (clip i: label i % 8, seed (seed, split_id, i))."""
  records.write_records(path, (
      make_sequence_example(
          generate_clip((seed, split_id, i), clip_label(i), num_frames=num_frames, size=size),
          clip_label(i), CLASSES[clip_label(i)])
      for i in range(lo, hi)))


def prepare(data_config, workdir):
  """Generates the dataset into its data dir unless metadata.json is already there.

  Returns the data dir. Raises errors.ConfigError if the data dir holds anything else: a
  dataset generated with other parameters, a converted dataset (data.name should be "custom"),
  or files the generator did not write. It never writes into such a directory (the generator
  replaces shards), and its messages never suggest deleting one.
  """
  data_dir = data_config.data_dir or os.path.join(workdir, "data", "synthetic_motion")
  want = generation_params(**data_config.synthetic)
  path = os.path.join(data_dir, METADATA)
  if os.path.exists(path):
    try:
      with open(path) as f:
        metadata = json.load(f)
    except ValueError:  # not JSON: not ours
      metadata = {}
    have = metadata.get("generation") if isinstance(metadata, dict) else None
    if have is None:
      errors.fail("data.data_dir", data_dir, _not_synthetic(data_dir, metadata))
    if have != want:
      changed = ", ".join(f"{k} {have.get(k)!r} there, {v!r} asked" for k, v in want.items()
                          if have.get(k) != v)
      # An older generator's data cannot be asked for again: only a new directory helps.
      back = ("" if have.get("version") != GENERATOR_VERSION else
              ", or config.data.synthetic back to the settings of this one")
      errors.fail("data.data_dir", data_dir,
                  f"holds the synthetic dataset generated with other settings ({changed}): set "
                  f"--config.data.data_dir to a new directory to generate it there{back}")
    logging.info("Using existing synthetic dataset in %s", data_dir)
    return data_dir
  if os.path.isdir(data_dir) and os.listdir(data_dir) and not os.path.exists(
      os.path.join(data_dir, GENERATING)):
    errors.fail("data.data_dir", data_dir, _not_synthetic(data_dir, None))
  logging.info("Generating synthetic motion dataset in %s with %s", data_dir, want)
  write_dataset(data_dir, **{k: v for k, v in want.items() if k != "version"})
  return data_dir


def _not_synthetic(data_dir, metadata):
  """What a data dir holds instead of the synthetic data, and the fix: `metadata` is its
  metadata.json (None if it has none)."""
  converted = (isinstance(metadata, dict) and "format" in metadata
               or os.path.isdir(os.path.join(data_dir, ".convert"))  # convert_videos.STATE_DIR
               or any(name.endswith("_failures.csv") for name in os.listdir(data_dir)))
  if converted and metadata is not None:
    return ("holds a dataset converted by vidtx.data.convert_videos, not the synthetic data: "
            "add --config.data.name=custom")
  if converted:
    return ("holds an unfinished conversion of vidtx.data.convert_videos (no metadata.json "
            "yet), not the synthetic data: run the converter again to finish it, then add "
            "--config.data.name=custom")
  return (f"holds files that are not the synthetic data (no {METADATA} of its generator): to "
          "train on your own DMVR shards add --config.data.name=custom; for the synthetic data "
          "set --config.data.data_dir to a new directory")
