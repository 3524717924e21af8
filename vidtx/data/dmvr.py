"""Input pipeline for DMVR-layout TFRecords (tf.train.SequenceExample per clip).

Layout: JPEG frames in the feature list "image/encoded", the label in the context feature
"clip/label/index"; shards named "<split>-<k>-of-<n>[.tfrecord]" in one directory. Record
counts are needed for the train epochs (and for multi-host eval); they are read from an optional
metadata.json, {"splits": {"train": 1000, ...}, "shard_counts": {"train": {"train-00000-of-00004
.tfrecord": 250, ...}, ...}}, and otherwise counted by reading the files once per process.

The train stream is a deterministic function of (seed, process_index): it is made of epochs,
every random choice uses stateless TF ops seeded from (seed, process_index, epoch, index), and
`start_batch` resumes it exactly without decoding the skipped examples.
"""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ logging quiet

from absl import logging  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vidtx.configuration import ConfigError  # pylint: disable=g-import-not-at-top

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_STRING_KEY = "clip/label/string"
METADATA = "metadata.json"
MAX_CYCLE_LENGTH = 16  # files read in parallel; fixed (never AUTOTUNE) so the order is fixed
READ_BUFFER_BYTES = 256 << 10


def _hide_accelerators_from_tf():
  """The input pipeline runs on CPU; the accelerators belong to JAX."""
  tf.get_logger().setLevel("ERROR")
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices, or has no GPU support
    pass


_hide_accelerators_from_tf()


class DataNotFoundError(FileNotFoundError, ValueError):
  """The data directory or the shards of a split are missing."""


def shard_pattern(split):
  return f"{split}-*-of-*"


def list_files(data_dir, split):
  """The split's shard files, sorted. Raises DataNotFoundError naming what was expected."""
  pattern = os.path.join(data_dir, shard_pattern(split))
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    problem = ("does not exist" if not tf.io.gfile.exists(data_dir)
               else f"has no shards for split {split!r}")
    raise DataNotFoundError(
        f"config.data.data_dir={data_dir!r} {problem}: looked for files matching {pattern!r} "
        f"(e.g. {split}-00000-of-00008.tfrecord). Set config.data.data_dir to the directory "
        "holding the DMVR TFRecord shards.")
  return files


def host_files(files, process_index, process_count):
  """The files this host reads: every process_count-th file, starting at process_index."""
  mine = files[process_index::process_count]
  if not mine:
    raise ValueError(
        f"Host {process_index} of {process_count} gets none of the {len(files)} shard files; "
        "write the dataset with at least as many shards as hosts.")
  return mine


def _load_metadata(data_dir):
  path = os.path.join(data_dir, METADATA)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


_COUNT_CACHE = {}


def _count_records(path):
  """Counts the records of one file by reading it (cached; only done without metadata)."""
  key = (path, tf.io.gfile.stat(path).length)
  if key not in _COUNT_CACHE:
    logging.info("Counting records in %s (add shard_counts to %s to skip this).", path, METADATA)
    _COUNT_CACHE[key] = int(_record_dataset(path).reduce(
        np.int64(0), lambda n, _: n + 1))
  return _COUNT_CACHE[key]


def _file_counts(data_dir, files):
  """Record count per file, from metadata.json "shard_counts" where listed, else by counting."""
  known = {}
  for counts in _load_metadata(data_dir).get("shard_counts", {}).values():
    known.update(counts)
  return [known[os.path.basename(f)] if os.path.basename(f) in known else _count_records(f)
          for f in files]


def num_examples(data_config, split, data_dir):
  """Total number of examples in `split` (all hosts together)."""
  count = _load_metadata(data_dir).get("splits", {}).get(split)
  if count is not None:
    return int(count)
  return sum(_file_counts(data_dir, list_files(data_dir, split)))


def _host_counts(data_dir, split, files, process_count):
  """Number of records of every host; a single host may use the metadata split count."""
  if process_count == 1:
    count = _load_metadata(data_dir).get("splits", {}).get(split)
    if count is not None:
      return [int(count)]
  counts = _file_counts(data_dir, files)
  return [sum(counts[p::process_count]) for p in range(process_count)]


# ---------------------------------------------------------------------------------------------
# Per-example processing (all functions are pure TF, usable inside tf.data maps).


def parse_example(serialized):
  """Returns (encoded JPEG frames [n] string, label int32)."""
  context, sequence = tf.io.parse_single_sequence_example(
      serialized,
      context_features={LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
      sequence_features={FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  return sequence[FRAMES_KEY], tf.cast(context[LABEL_KEY], tf.int32)


def sample_indices(num_available, num_frames, stride, key=None):
  """Indices of the `num_frames` frames to use out of `num_available`.

  Train (key given): a window of stride `stride` with a start offset drawn uniformly from
  [0, n - (num_frames - 1) * stride - 1]. Eval (key None): the centred window.
  If the video is shorter than the window, the window starts at 0 and the indices loop
  around (index mod n), e.g. n=3, 5 frames -> 0 1 2 0 1.
  """
  num_available = tf.convert_to_tensor(num_available, tf.int32)
  tf.debugging.assert_positive(num_available, message="A video has no frames.")
  max_start = tf.maximum(num_available - ((num_frames - 1) * stride + 1), 0)
  if key is None:
    start = max_start // 2
  else:
    start = tf.random.stateless_uniform(
        [], key, minval=0, maxval=max_start + 1, dtype=tf.int32, alg="philox")
  return (start + tf.range(num_frames) * stride) % num_available


def decode_frames(encoded):
  """Decodes JPEG frames [T] string -> uint8 [T, H, W, 3]."""
  return tf.map_fn(lambda x: tf.io.decode_jpeg(x, channels=3), encoded,
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def resize_short_side(frames, size):
  """Resizes [T, H, W, C] so min(H, W) == size (bilinear); returns float32."""
  h, w = tf.shape(frames)[1], tf.shape(frames)[2]
  short = tf.minimum(h, w)

  def resize():
    # Integer rounding keeps the short side exactly `size`.
    new_h, new_w = (h * size + short // 2) // short, (w * size + short // 2) // short
    return tf.image.resize(frames, tf.stack([new_h, new_w]), method="bilinear")

  return tf.cond(short == size, lambda: tf.cast(frames, tf.float32), resize)


def center_crop(frames, size):
  h, w = tf.shape(frames)[1], tf.shape(frames)[2]
  return tf.image.crop_to_bounding_box(frames, (h - size) // 2, (w - size) // 2, size, size)


def random_crop(frames, size, key):
  """The same random crop for every frame (the time axis is kept whole)."""
  num_frames = frames.shape[0]
  return tf.image.stateless_random_crop(frames, [num_frames, size, size, 3], seed=key)


def random_flip(frames, key):
  """Flips all frames of a clip horizontally together, with probability 1/2."""
  flip = tf.random.stateless_uniform([], key, alg="philox") < 0.5
  return tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)


def normalize(frames, mean, std):
  """(x / 255 - mean) / std per channel, float32."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (tf.cast(frames, tf.float32) / 255.0 - mean) / std


def process_example(data_config, serialized, key=None):
  """Parses one record into (video float32 [T, crop, crop, 3], label int32).

  With `key` (a stateless seed [2]) it applies the train augmentation, else eval processing.
  Only the sampled frames are decoded.
  """
  cfg = data_config
  encoded, label = parse_example(serialized)
  train = key is not None
  sub = (lambda i: tf.random.experimental.stateless_fold_in(key, i)) if train else None
  indices = sample_indices(tf.shape(encoded)[0], cfg.num_frames, cfg.frame_stride,
                           key=sub(0) if train else None)
  frames = decode_frames(tf.gather(encoded, indices))
  frames.set_shape([cfg.num_frames, None, None, 3])
  frames = resize_short_side(frames, cfg.min_resize)
  if train:
    frames = random_crop(frames, cfg.crop_size, sub(1))
    if cfg.flip:
      frames = random_flip(frames, sub(2))
  else:
    frames = center_crop(frames, cfg.crop_size)
  return normalize(frames, cfg.mean, cfg.std), label


# ---------------------------------------------------------------------------------------------
# Datasets.


def _record_dataset(path):
  return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)


def _read_records(files):
  """Reads the files' records, interleaved one record per file in turn (deterministic)."""
  files = tf.data.Dataset.from_tensor_slices(files)
  return files.interleave(
      _record_dataset, cycle_length=MAX_CYCLE_LENGTH, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options(ds):
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_dataset(data_config, files, num_records, *, batch_size, seed, start_batch=0,
                  process_index=0):
  """Infinite, deterministic stream of train batches for one host, starting at `start_batch`.

  Epoch e reshuffles the files and (in blocks of shuffle_buffer) the records with seeds from
  (seed, process_index, e), then keeps the first `batches_per_epoch * batch_size` records.
  """
  cfg = data_config
  batches_per_epoch = num_records // batch_size
  if batches_per_epoch == 0:
    raise ValueError(
        f"This host has only {num_records} training records, fewer than batch_size="
        f"{batch_size}: lower the batch size or use a larger dataset.")
  first_epoch, skip_batches = divmod(start_batch, batches_per_epoch)
  host_key = tf.constant([seed, process_index], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in

  def epoch_records(epoch):
    key = fold_in(host_key, epoch)
    order = tf.random.experimental.stateless_shuffle(tf.constant(files), fold_in(key, 0))
    # A stateless block shuffle instead of Dataset.shuffle, whose result depends on TF's
    # global seed: the order must be a function of our seed only.
    records = _read_records(order).batch(cfg.shuffle_buffer).enumerate().map(
        lambda i, block: tf.random.experimental.stateless_shuffle(
            block, fold_in(fold_in(key, 1), i))).unbatch()
    records = records.take(batches_per_epoch * batch_size).enumerate()
    # Resuming: drop the already-consumed records of the first epoch before decoding them.
    skip = tf.where(epoch == first_epoch, np.int64(skip_batches * batch_size), np.int64(0))
    return records.skip(skip).map(
        lambda index, record: (fold_in(fold_in(key, 2), index), record))

  def process(key, record):
    video, label = process_example(cfg, record, key)
    return {"video": video, "label": label}

  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch_records)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Every epoch holds a multiple of batch_size records, so batches never straddle epochs.
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _options(ds)


def eval_dataset(data_config, files, *, batch_size):
  """One pass over the files' records in a fixed order; the last batch may be short."""
  def process(record):
    video, label = process_example(data_config, record)
    return {"video": video, "label": label}

  ds = _read_records(files).map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _options(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _padded_eval_batches(ds, data_config, batch_size, num_batches):
  """Pads every batch to batch_size (mask 0) and adds empty batches up to num_batches."""
  yielded = 0
  for batch in ds.as_numpy_iterator():
    n = len(batch["label"])
    pad = [(0, batch_size - n)]
    yield {"video": np.pad(batch["video"], pad + [(0, 0)] * 4),
           "label": np.pad(batch["label"], pad),
           "mask": (np.arange(batch_size) < n).astype(np.float32)}
    yielded += 1
  cfg = data_config
  for _ in range(num_batches - yielded):
    yield {"video": np.zeros((batch_size, cfg.num_frames, cfg.crop_size, cfg.crop_size, 3),
                             np.float32),
           "label": np.zeros((batch_size,), np.int32),
           "mask": np.zeros((batch_size,), np.float32)}


def check_config(data_config):
  """Data fields that cannot work; run at start by `configuration.validate` and by `build`."""
  cfg = data_config
  for field in ("num_frames", "frame_stride", "crop_size", "shuffle_buffer"):
    if cfg[field] < 1:
      raise ConfigError(f"config.data.{field}={cfg[field]!r}: must be at least 1")
  if cfg.crop_size > cfg.min_resize:
    raise ConfigError(f"config.data.min_resize={cfg.min_resize!r}: must be at least "
                      f"config.data.crop_size={cfg.crop_size}")
  if len(cfg.mean) != 3 or len(cfg.std) != 3:
    raise ConfigError(f"config.data.mean={tuple(cfg.mean)!r}, std={tuple(cfg.std)!r}: "
                      "give 3 values each (RGB)")


def build(data_config, split, *, batch_size, seed, start_batch=0, process_index=0,
          process_count=1, data_dir=None):
  """Iterator of host-local numpy batches of `split`.

  split == data_config.train_split: infinite {"video": f32 [b, T, S, S, 3], "label": i32 [b]},
  deterministic in (seed, process_index); the first batch is batch number `start_batch`.
  Any other split: one pass, {"video", "label", "mask"}, padded with mask 0 to full batches;
  every host yields the same number of batches.
  `data_dir` defaults to config.data.data_dir (pass the value returned by `prepare`).
  """
  cfg = data_config
  check_config(cfg)
  data_dir = data_dir or cfg.data_dir
  if not data_dir:
    raise ValueError("config.data.data_dir is empty: pass data_dir=prepare(config.data, workdir) "
                     "to build().")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  files = list_files(data_dir, split)
  mine = host_files(files, process_index, process_count)
  if split == cfg.train_split:
    counts = _host_counts(data_dir, split, files, process_count)
    ds = train_dataset(cfg, mine, counts[process_index], batch_size=batch_size, seed=seed,
                       start_batch=start_batch, process_index=process_index)
    return ds.as_numpy_iterator()
  if start_batch:
    raise ValueError(f"start_batch={start_batch} is only supported for the train split, "
                     f"not {split!r}.")
  # Hosts must run the same number of eval steps, so the host with fewer records yields
  # extra all-padding batches (a single host needs no counting).
  num_batches = 0
  if process_count > 1:
    num_batches = math.ceil(max(_host_counts(data_dir, split, files, process_count)) / batch_size)
  return _padded_eval_batches(eval_dataset(cfg, mine, batch_size=batch_size), cfg, batch_size,
                              num_batches)
