"""The tf.data input pipeline: record files in, host-local numpy batches out (`build`).

The train stream is a deterministic function of (seed, process_index): it is made of epochs,
every random choice uses stateless TF ops seeded from (seed, process_index, epoch, index), and
`start_batch` resumes it exactly without decoding the skipped examples. Batch b is always made
of the same run of records, so a record that fails to decode (corrupt JPEG, no frames) is
dropped and counted without shifting the batches after it. Evaluation is one pass in a fixed
order, padded to full batches, with the same number of batches on every host.

Records come from DMVR shards (vidtx.data.records) or a TFDS dataset
(vidtx.data.tfds_datasets); each becomes clips or views by vidtx.data.clips.
"""

import math

import numpy as np
import tensorflow as tf

from vidtx.data import clips, records, tfds_datasets, transforms
from vidtx.errors import ConfigError

MAX_CYCLE_LENGTH = 16  # files read in parallel; fixed (never AUTOTUNE) so the order is fixed
PARALLEL_BATCHES = 4  # batches decoded at the same time (fixed, so the order is fixed)
fold_in = tf.random.experimental.stateless_fold_in


def _read_records(files):
  """Reads the files' records, interleaved one record per file in turn (deterministic)."""
  files = tf.data.Dataset.from_tensor_slices(files)
  return files.interleave(
      records.record_dataset, cycle_length=MAX_CYCLE_LENGTH, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options(ds):
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _process_batches(windows, process, window_size):
  """Turns every window of records into one batch of the records that process without error.

  `windows` yields tuples of tensors [m, ...] (m <= window_size records, e.g. (serialized,) or
  (keys, serialized)); `process` maps one record's tuple to a dict of tensors. A record whose
  processing fails (JPEG frames that do not decode, no frames, no label) is dropped, so a
  window gives a batch of n <= m examples, possibly n = 0, plus "records": m.
  """
  def process_window(*window):
    processed = tf.data.Dataset.from_tensor_slices(window).map(
        process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    empty = {k: tf.zeros([0, *spec.shape], spec.dtype)
             for k, spec in processed.element_spec.items()}
    batch = processed.batch(window_size).concatenate(
        tf.data.Dataset.from_tensors(empty)).take(1)  # the empty batch when all failed
    return batch.map(lambda b: {**b, "records": tf.shape(window[0])[0]})

  return windows.interleave(process_window, cycle_length=PARALLEL_BATCHES, block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(data_config, files, num_records, *, batch_size, seed, start_batch=0,
                  process_index=0, flip_table=None):
  """Infinite, deterministic stream of train batches for one host, starting at `start_batch`.

  Epoch e reshuffles the files and (in blocks of shuffle_buffer) the records with seeds from
  (seed, process_index, e), then keeps the first `batches_per_epoch * records_per_batch`
  records; batch b is made of a fixed run of batch_size / repeated_aug records, each giving
  repeated_aug consecutive clips. An epoch is one pass over the records: repeated_aug x
  num_records clips. A record that fails to decode is dropped and its slots are filled with
  the batch's other clips (in order, repeating), so batch b stays batch b; each batch's
  "skipped" counts its dropped records. A batch whose records all fail is an error.
  """
  cfg = data_config
  records_per_batch = batch_size // cfg.repeated_aug
  batches_per_epoch = num_records // records_per_batch
  if batches_per_epoch == 0:
    raise ValueError(
        f"This host has only {num_records} training records, fewer than the "
        f"{records_per_batch} of one batch (batch_size={batch_size} / config.data.repeated_aug="
        f"{cfg.repeated_aug}): lower the batch size or use a larger dataset.")
  first_epoch, skip_batches = divmod(start_batch, batches_per_epoch)
  host_key = tf.constant([seed, process_index], tf.int64)

  def epoch_windows(epoch):
    key = fold_in(host_key, epoch)
    order = tf.random.experimental.stateless_shuffle(tf.constant(files), fold_in(key, 0))
    # A stateless block shuffle instead of Dataset.shuffle, whose result depends on TF's
    # global seed: the order must be a function of our seed only.
    shuffled = _read_records(order).batch(cfg.shuffle_buffer).enumerate().map(
        lambda i, block: tf.random.experimental.stateless_shuffle(
            block, fold_in(fold_in(key, 1), i))).unbatch()
    shuffled = shuffled.take(batches_per_epoch * records_per_batch).enumerate()
    # Resuming: drop the already-consumed records of the first epoch before decoding them.
    skip = tf.where(epoch == first_epoch, np.int64(skip_batches * records_per_batch),
                    np.int64(0))
    return shuffled.skip(skip).map(
        lambda index, record: (fold_in(fold_in(key, 2), index), record)).batch(
            records_per_batch)

  def process(key, record):
    video, label = clips.train_example(cfg, record, key, flip_table)
    return {"video": video, "label": label}

  def fill(batch):
    clip = [cfg.num_frames, cfg.crop_size, cfg.crop_size, 3]
    video, label = tf.reshape(batch["video"], [-1, *clip]), tf.reshape(batch["label"], [-1])
    valid = tf.shape(label)[0]
    check = tf.debugging.assert_positive(valid, message=(
        f"All {records_per_batch} records of a train batch failed to decode: the data is "
        "probably not DMVR-layout JPEG frames; try vidtx.data.clips.train_example on one "
        "record to see the error."))
    with tf.control_dependencies([check]):
      take = tf.range(batch_size) % valid
    return {"video": tf.gather(video, take), "label": tf.gather(label, take),
            "skipped": batch["records"] - valid // cfg.repeated_aug}

  windows = tf.data.Dataset.counter(first_epoch).flat_map(epoch_windows)
  ds = _process_batches(windows, process, records_per_batch).map(fill)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def eval_dataset(data_config, files, *, batch_size):
  """One pass over the files' records in a fixed order, in windows of batch_size records:
  {"video": [n, V, T, S, S, 3], "label": [n], "records": m}, the n <= m records of the window
  that decode (the last window may be short)."""
  def process(record):
    video, label = clips.eval_example(data_config, record)
    return {"video": video, "label": label}

  windows = _read_records(files).batch(batch_size)
  return _options(_process_batches(windows, process, batch_size).prefetch(tf.data.AUTOTUNE))


class TrainBatches:
  """Iterator of host-local train batches {"video", "label"}; `skipped` counts the records that
  failed to decode in the batches returned so far (since this iterator was built)."""

  def __init__(self, ds):
    self._batches = ds.as_numpy_iterator()
    self.skipped = 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._batches)
    self.skipped += int(batch.pop("skipped"))
    return batch


def _padded_eval_batches(ds, data_config, batch_size, num_batches):
  """Pads every batch to batch_size (mask 0), flags the window's failed records in "skipped",
  drops the view axis for one view, and adds empty batches up to num_batches."""
  cfg = data_config
  clip = (cfg.num_frames, cfg.crop_size, cfg.crop_size, 3)
  shape = clip if clips.num_views(cfg) == 1 else (clips.num_views(cfg), *clip)
  slots = np.arange(batch_size)
  yielded = 0
  for batch in ds.as_numpy_iterator():
    n, read = len(batch["label"]), int(batch["records"])
    pad = [(0, batch_size - n)]
    video = batch["video"].reshape((n, *shape))
    yield {"video": np.pad(video, pad + [(0, 0)] * len(shape)),
           "label": np.pad(batch["label"], pad),
           "mask": (slots < n).astype(np.float32),
           "skipped": ((slots >= n) & (slots < read)).astype(np.float32)}
    yielded += 1
  for _ in range(num_batches - yielded):
    yield {"video": np.zeros((batch_size, *shape), np.float32),
           "label": np.zeros((batch_size,), np.int32),
           "mask": np.zeros((batch_size,), np.float32),
           "skipped": np.zeros((batch_size,), np.float32)}


def num_examples(data_config, split, data_dir):
  """Total number of examples in `split` (all hosts together)."""
  if tfds_datasets.is_tfds(data_config):
    return tfds_datasets.tfds_split(data_config, data_dir, split).num_examples
  count = records.load_metadata(data_dir).get("splits", {}).get(split)
  if count is not None:
    return int(count)
  return sum(records.file_counts(data_dir, records.list_files(data_dir, split)))


def _host_counts(data_config, data_dir, split, files, process_count):
  """Number of records of every host; a single host may use the metadata split count."""
  if tfds_datasets.is_tfds(data_config):
    counts = tfds_datasets.tfds_split(data_config, data_dir, split).shard_lengths
    return [sum(counts[p::process_count]) for p in range(process_count)]
  if process_count == 1:
    count = records.load_metadata(data_dir).get("splits", {}).get(split)
    if count is not None:
      return [int(count)]
  counts = records.file_counts(data_dir, files)
  return [sum(counts[p::process_count]) for p in range(process_count)]


SAMPLERS = ("dense", "segment")
TRAIN_CROPS = ("random", "random_resized")
FLIPS = ("none", "random", "swap_labels")
EVAL_CROPS = (1, 3)


def check_config(data_config):
  """Data fields that cannot work; run at start by `configuration.validate` and by `build`."""
  cfg = data_config

  def fail(field, fix):
    raise ConfigError(f"config.data.{field}={cfg[field]!r}: {fix}")

  for field in ("num_frames", "frame_stride", "crop_size", "shuffle_buffer", "repeated_aug",
                "eval_clips"):
    if cfg[field] < 1:
      fail(field, "must be at least 1")
  if cfg.crop_size > cfg.min_resize:
    fail("min_resize", f"must be at least config.data.crop_size={cfg.crop_size}")
  if cfg.max_resize and cfg.max_resize < cfg.min_resize:
    fail("max_resize", f"must be 0 (off) or at least config.data.min_resize={cfg.min_resize}")
  if cfg.eval_resize and cfg.eval_resize < cfg.crop_size:
    fail("eval_resize", f"must be 0 (min_resize) or at least config.data.crop_size="
         f"{cfg.crop_size}")
  if len(cfg.tfds_features) != 2:
    fail("tfds_features", "give the names of the video and the label feature")
  if len(cfg.mean) != 3 or len(cfg.std) != 3:
    raise ConfigError(f"config.data.mean={tuple(cfg.mean)!r}, std={tuple(cfg.std)!r}: "
                      "give 3 values each (RGB)")
  for field, choices in (("sampler", SAMPLERS), ("train_crop", TRAIN_CROPS), ("flip", FLIPS),
                         ("eval_crops", EVAL_CROPS)):
    if cfg[field] not in choices:
      fail(field, f"choose one of {choices}")
  if cfg.sampler == "segment" and cfg.frame_stride != 1:
    fail("frame_stride", "the segment sampler spreads the frames over the whole video and has "
         "no stride: set it to 1")
  for field, upper in (("crop_scale", 1.0), ("crop_ratio", None)):
    lo, hi = cfg[field]
    if not 0 < lo <= hi or (upper is not None and hi > upper):
      fail(field, "give (low, high) with 0 < low <= high" + (f" <= {upper}" if upper else ""))
  if not 0 <= cfg.randaugment_layers:
    fail("randaugment_layers", "must be >= 0 (0: off)")
  if not 0 <= cfg.randaugment_magnitude <= 10:
    fail("randaugment_magnitude", "must be in [0, 10]")
  if not 0 <= cfg.color_jitter <= 1:
    fail("color_jitter", "must be in [0, 1] (0: off)")
  for field in ("random_erasing", "mix_switch_prob"):
    if not 0 <= cfg[field] <= 1:
      fail(field, "is a probability: must be in [0, 1]")
  for field in ("mixup_alpha", "cutmix_alpha"):
    if cfg[field] < 0:
      fail(field, "must be >= 0 (0: off)")


def build(data_config, split, *, batch_size, seed, start_batch=0, process_index=0,
          process_count=1, data_dir=None):
  """Iterator of host-local numpy batches of `split`.

  split == data_config.train_split: an infinite `TrainBatches` of {"video": f32 [b, T, S, S, 3],
  "label": i32 [b]}, deterministic in (seed, process_index); the first batch is batch number
  `start_batch`; its `skipped` attribute counts the records that failed to decode.
  Any other split: one pass, {"video", "label", "mask", "skipped"}, padded with mask 0 to full
  batches; "video" is [b, T, S, S, 3], or [b, V, T, S, S, 3] for V = eval_clips x eval_crops
  > 1 views (see clips.eval_example); "skipped" is 1 in the slots of records that failed to
  decode.
  Every host yields the same number of batches.
  `data_dir` defaults to config.data.data_dir (pass the value returned by `prepare`).
  """
  cfg = data_config
  check_config(cfg)
  data_dir = data_dir or cfg.data_dir
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  if tfds_datasets.is_tfds(cfg):
    data_dir = cfg.data_dir  # "" is TFDS's default directory
  elif not data_dir:
    raise ValueError("config.data.data_dir is empty: pass data_dir=prepare(config.data, workdir) "
                     "to build().")
  files = tfds_datasets.split_files(cfg, data_dir, split)
  mine = records.host_files(files, process_index, process_count)
  if split == cfg.train_split:
    if batch_size % cfg.repeated_aug:
      raise ConfigError(f"config.data.repeated_aug={cfg.repeated_aug}: must divide the batch of "
                        f"{batch_size} clips per host, which holds whole groups of copies")
    flip_table = None
    if cfg.flip == "swap_labels":
      names = tfds_datasets.class_names(cfg, data_dir)
      if len(names) != cfg.num_classes:
        source = "TFDS label feature" if tfds_datasets.is_tfds(cfg) else records.LABELS
        raise ConfigError(f"config.data.num_classes={cfg.num_classes}: the dataset's {source} "
                          f"names {len(names)} classes")
      flip_table = transforms.flip_table(names)
    counts = _host_counts(cfg, data_dir, split, files, process_count)
    ds = train_dataset(cfg, mine, counts[process_index], batch_size=batch_size, seed=seed,
                       start_batch=start_batch, process_index=process_index,
                       flip_table=flip_table)
    return TrainBatches(ds)
  if start_batch:
    raise ValueError(f"start_batch={start_batch} is only supported for the train split, "
                     f"not {split!r}.")
  # Hosts must run the same number of eval steps, so the host with fewer records yields
  # extra all-padding batches (a single host needs no counting).
  num_batches = 0
  if process_count > 1:
    num_batches = math.ceil(
        max(_host_counts(cfg, data_dir, split, files, process_count)) / batch_size)
  return _padded_eval_batches(eval_dataset(cfg, mine, batch_size=batch_size), cfg, batch_size,
                              num_batches)
