"""The tf.data input pipeline: record files in, host-local numpy batches out (`build`).

The train stream is a deterministic function of (seed, process_index): it is made of epochs,
every random choice uses stateless TF ops seeded from (seed, process_index, epoch, index), and
`start_batch` resumes it exactly without decoding the skipped examples. Batch b is always made
of the same run of records, so a record that fails to decode (corrupt JPEG, no frames) is
dropped and counted without shifting the batches after it. A shard that ends early (truncated,
or damaged from some record on) still gives its full record count: its readable records, then
stand-ins for the lost ones, counted as skipped (see `_read_records`). Evaluation is one pass in
a fixed order, padded to full batches, with the same number of batches on every host.

Whether a split is read as training or as evaluation data is the caller's choice (`build`'s
`train`), never its name: any split can be evaluated, the train split included.

Records come from DMVR shards (vidtx.data.records) or a TFDS dataset
(vidtx.data.tfds_datasets); each becomes clips or views by vidtx.data.clips.
"""

import math
import os

import numpy as np
import tensorflow as tf

from vidtx.data import clips, records, tfds_datasets, transforms
from vidtx.errors import ConfigError

MAX_CYCLE_LENGTH = 16  # files read in parallel; fixed (never AUTOTUNE) so the order is fixed
PARALLEL_BATCHES = 4  # batches decoded at the same time (fixed, so the order is fixed)
fold_in = tf.random.experimental.stateless_fold_in


def _read_records(files, counts, *, copies):
  """(record, lost) pairs of the files, interleaved one record per file in turn
  (deterministic); file k gives exactly counts[k] records.

  A file that ends early (truncated, or damaged from some record on) gives its readable records,
  then stand-ins for the lost ones up to its count, so every later record keeps its place (and
  a resumed stream its batches). A stand-in's `lost` is its file's path ("" for a record read in
  its place): copies of the file's readable records with copies=True (training, which needs a
  clip in every slot), else empty records.
  """
  def read(path, count):
    readable = records.readable_records(path)
    empty = tf.data.Dataset.from_tensors(tf.constant("")).repeat()
    stand_ins = readable.repeat().concatenate(empty) if copies else empty
    return readable.map(lambda r: (r, tf.constant(""))).concatenate(
        stand_ins.map(lambda r: (r, path))).take(count)

  pairs = tf.data.Dataset.from_tensor_slices((files, tf.cast(counts, tf.int64)))
  return pairs.interleave(read, cycle_length=MAX_CYCLE_LENGTH, block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options(ds):
  options = tf.data.Options()
  options.deterministic = True
  # No autotuning thread: deleting an iterator waits for that thread to end its current sleep,
  # which doubles after each tuning round up to a minute (TF 2.21 does not cut it short), so a
  # finished evaluation or a dropped train stream held the process up for as long. AUTOTUNE
  # values then take TF's defaults (parallelism from the core count, prefetch buffers that grow
  # while the consumer waits): the demo's pipeline is as fast.
  options.autotune.enabled = False
  return ds.with_options(options)


def _process_batches(windows, process, window_size, *, keep_stand_ins):
  """Turns every window of records into one batch of the records that process without error.

  `windows` yields tuples of tensors [m, ...] (m <= window_size records, e.g. (serialized, lost)
  or (keys, serialized, lost)), the last one the records' `lost` of `_read_records`; `process`
  maps one record's tuple to a dict of tensors. A record whose processing fails (JPEG frames
  that do not decode, no frames, no label) is dropped, and so is a stand-in for a lost record
  unless keep_stand_ins; a window gives a batch of n <= m examples, possibly n = 0, plus
  "records": m and "lost": the window's `lost`.
  """
  def process_window(*window):
    slices = tf.data.Dataset.from_tensor_slices(window)
    if not keep_stand_ins:
      slices = slices.filter(lambda *record: tf.equal(record[-1], ""))
    processed = slices.map(
        process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    empty = {k: tf.zeros([0, *spec.shape], spec.dtype)
             for k, spec in processed.element_spec.items()}
    batch = processed.batch(window_size).concatenate(
        tf.data.Dataset.from_tensors(empty)).take(1)  # the empty batch when all failed
    return batch.map(lambda b: {**b, "records": tf.shape(window[0])[0], "lost": window[-1]})

  return windows.interleave(process_window, cycle_length=PARALLEL_BATCHES, block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(data_config, files, counts, *, batch_size, seed, start_batch=0,
                  process_index=0, flip_table=None):
  """Infinite, deterministic stream of train batches for one host, starting at `start_batch`.

  `counts` are the files' record counts. Epoch e reshuffles the files and (in blocks of
  shuffle_buffer) the records with seeds from (seed, process_index, e), then keeps the first
  `batches_per_epoch * records_per_batch` records; batch b is made of a fixed run of
  batch_size / repeated_aug records, each giving repeated_aug consecutive clips. An epoch is one
  pass over the records: repeated_aug x sum(counts) clips. A record that fails to decode is
  dropped and its slots are filled with the batch's other clips (in order, repeating), so batch
  b stays batch b; each batch's "skipped" counts its dropped records and its stand-ins for the
  lost records of a shard that ends early (copies of that shard's readable records), "lost"
  names their shards. A batch whose records all fail is an error.
  """
  cfg = data_config
  num_records = sum(counts)
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
    order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), fold_in(key, 0))
    read = _read_records(tf.gather(files, order), tf.gather(counts, order), copies=True)

    # A stateless block shuffle instead of Dataset.shuffle, whose result depends on TF's
    # global seed: the order must be a function of our seed only.
    def shuffle(i, block):
      order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(block[0])[0]),
                                                       fold_in(fold_in(key, 1), i))
      return tuple(tf.gather(x, order) for x in block)

    shuffled = read.batch(cfg.shuffle_buffer).enumerate().map(shuffle).unbatch()
    shuffled = shuffled.take(batches_per_epoch * records_per_batch).enumerate()
    # Resuming: drop the already-consumed records of the first epoch before decoding them.
    skip = tf.where(epoch == first_epoch, np.int64(skip_batches * records_per_batch),
                    np.int64(0))
    return shuffled.skip(skip).map(
        lambda index, pair: (fold_in(fold_in(key, 2), index), *pair)).batch(records_per_batch)

  def process(key, record, lost):
    video, label = clips.train_example(cfg, record, key, flip_table)
    return {"video": video, "label": label, "stand_in": tf.not_equal(lost, "")}

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
    # The records read in their place that decoded; a stand-in trains but counts as skipped.
    read = tf.reduce_sum(tf.cast(tf.logical_not(batch["stand_in"]), tf.int32))
    return {"video": tf.gather(video, take), "label": tf.gather(label, take),
            "skipped": batch["records"] - read, "lost": batch["lost"]}

  windows = tf.data.Dataset.counter(first_epoch).flat_map(epoch_windows)
  ds = _process_batches(windows, process, records_per_batch, keep_stand_ins=True).map(fill)
  return _options(ds.prefetch(tf.data.AUTOTUNE))


def eval_dataset(data_config, files, counts, *, batch_size):
  """One pass over the files' records (counts[k] of file k) in a fixed order, in windows of
  batch_size records: {"video": [n, V, T, S, S, 3], "label": [n], "records": m, "lost": [m]},
  the n <= m records of the window that decode (the last window may be short); the stand-ins
  for the lost records of a shard that ends early are among the m - n (see `_read_records`)."""
  def process(record, lost):
    del lost  # stand-ins are dropped before processing
    video, label = clips.eval_example(data_config, record)
    return {"video": video, "label": label}

  windows = _read_records(files, counts, copies=False).batch(batch_size)
  return _options(_process_batches(windows, process, batch_size, keep_stand_ins=False)
                  .prefetch(tf.data.AUTOTUNE))


def _report_lost(lost):
  """Names in the log (once) the shards that the batch's stand-ins stand in for."""
  for path in set(lost.tolist()) - {b""}:
    records.report_damaged(path.decode())


class TrainBatches:
  """Iterator of host-local train batches {"video", "label"}; `skipped` counts the records that
  failed to decode or were lost in a shard that ends early, in the batches returned so far
  (since this iterator was built). `close` stops its pipeline now, not when it is collected."""

  def __init__(self, ds):
    self._batches = ds.as_numpy_iterator()
    self.skipped = 0

  def __iter__(self):
    return self

  def __next__(self):
    if self._batches is None:
      raise StopIteration
    batch = next(self._batches)
    self.skipped += int(batch.pop("skipped"))
    _report_lost(batch.pop("lost"))
    return batch

  def close(self):
    """Releases the pipeline: its threads stop instead of decoding batches nobody reads."""
    self._batches = None

  @property
  def closed(self):
    return self._batches is None


def _padded_eval_batches(ds, data_config, batch_size, num_batches):
  """Pads every batch to batch_size (mask 0), flags the window's failed and lost records in
  "skipped", drops the view axis for one view, and adds empty batches up to num_batches."""
  cfg = data_config
  size = clips.eval_crop_size(cfg)
  clip = (cfg.num_frames, size, size, 3)
  shape = clip if clips.num_views(cfg) == 1 else (clips.num_views(cfg), *clip)
  slots = np.arange(batch_size)
  yielded = 0
  for batch in ds.as_numpy_iterator():
    n, read = len(batch["label"]), int(batch["records"])
    _report_lost(batch["lost"])
    pad = [(0, batch_size - n)]
    video = batch["video"].reshape((n, *shape))
    yield {"video": np.pad(video, pad + [(0, 0)] * len(shape)),
           "label": np.pad(batch["label"], pad),
           "mask": (slots < n).astype(np.float32),
           "skipped": ((slots >= n) & (slots < read)).astype(np.float32)}
    yielded += 1
  for _ in range(num_batches - yielded):
    yield {"video": np.zeros((batch_size, *shape), np.uint8),
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


def _file_counts(data_config, data_dir, split, files):
  """The record count of every file: what it was written with (TFDS's shard lengths, the
  converter's metadata.json), so a file that ends early is noticed; else counted."""
  if tfds_datasets.is_tfds(data_config):
    return list(tfds_datasets.tfds_split(data_config, data_dir, split).shard_lengths)
  return records.file_counts(data_dir, files)


def check_num_classes(data_config, data_dir):
  """Raises ConfigError unless config.data.num_classes is the number of classes the dataset
  names (its labels.json, or a TFDS dataset's label feature), where it names them: a head of
  another size trains on missing or wrong classes without an error. Returns the names, or None
  for a dataset without labels.json."""
  cfg = data_config
  tfds = tfds_datasets.is_tfds(cfg)
  if not tfds and not tf.io.gfile.exists(os.path.join(data_dir, records.LABELS)):
    return None
  names = tfds_datasets.class_names(cfg, data_dir)
  if len(names) != cfg.num_classes:
    source = "TFDS label feature" if tfds else records.LABELS
    raise ConfigError(f"config.data.num_classes={cfg.num_classes}: the dataset's {source} names "
                      f"{len(names)} classes: set --config.data.num_classes={len(names)}")
  return names


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
  if cfg.eval_crop_size < 0 or clips.eval_crop_size(cfg) > (cfg.eval_resize or cfg.min_resize):
    fail("eval_crop_size", f"must be 0 (crop_size) or a side at most the eval short side "
         f"{cfg.eval_resize or cfg.min_resize} (config.data.eval_resize, or min_resize)")
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


def build(data_config, split, *, train, batch_size, seed, start_batch=0, process_index=0,
          process_count=1, data_dir=None):
  """Iterator of host-local numpy batches of `split`, read for training (train=True) or for
  evaluation (train=False): the caller's role decides, whatever the split's name.

  train=True: an infinite `TrainBatches` of {"video": uint8 [b, T, S, S, 3], "label": i32 [b]},
  deterministic in (seed, process_index); the first batch is batch number `start_batch`; its
  `skipped` attribute counts the records that failed to decode or were lost.
  train=False: one pass, {"video", "label", "mask", "skipped"}, padded with mask 0 to full
  batches; "video" is uint8 [b, T, S, S, 3], or [b, V, T, S, S, 3] for V = eval_clips x
  eval_crops > 1 views (see clips.eval_example); "skipped" is 1 in the slots of records that
  failed to decode or were lost.
  Every host yields the same number of batches. Videos are uint8 pixels: the train and eval
  steps normalise them on the device (vidtx.data.on_device), where training also erases.
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
  if not train and start_batch:
    raise ValueError(f"start_batch={start_batch} is only supported for training, not for "
                     f"evaluating {split!r}.")
  if train and batch_size % cfg.repeated_aug:
    raise ConfigError(f"config.data.repeated_aug={cfg.repeated_aug}: must divide the batch of "
                      f"{batch_size} clips per host, which holds whole groups of copies")
  files = tfds_datasets.split_files(cfg, data_dir, split)
  mine = records.host_files(files, process_index, process_count)
  counts = _file_counts(cfg, data_dir, split, files)
  if train:
    flip_table = None
    if cfg.flip == "swap_labels":
      names = tfds_datasets.class_names(cfg, data_dir)  # raises saying where to put them
      check_num_classes(cfg, data_dir)
      flip_table = transforms.flip_table(names)
    ds = train_dataset(cfg, mine, counts[process_index::process_count], batch_size=batch_size,
                       seed=seed, start_batch=start_batch, process_index=process_index,
                       flip_table=flip_table)
    return TrainBatches(ds)
  # Hosts must run the same number of eval steps, so the host with fewer records yields
  # extra all-padding batches.
  num_batches = max(math.ceil(sum(counts[p::process_count]) / batch_size)
                    for p in range(process_count))
  return _padded_eval_batches(
      eval_dataset(cfg, mine, counts[process_index::process_count], batch_size=batch_size), cfg,
      batch_size, num_batches)
