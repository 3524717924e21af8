"""Input pipeline for DMVR-layout TFRecords (tf.train.SequenceExample per clip).

Layout: JPEG frames in the feature list "image/encoded", the label in the context feature
"clip/label/index"; shards named "<split>-<k>-of-<n>[.tfrecord]" in one directory. Record
counts are needed for the train epochs (and for multi-host eval); they are read from an optional
metadata.json, {"splits": {"train": 1000, ...}, "shard_counts": {"train": {"train-00000-of-00004
.tfrecord": 250, ...}, ...}}, and otherwise counted by reading the files once per process.

The train stream is a deterministic function of (seed, process_index): it is made of epochs,
every random choice uses stateless TF ops seeded from (seed, process_index, epoch, index), and
`start_batch` resumes it exactly without decoding the skipped examples. Batch b is always made
of the same run of records, so a record that fails to decode (corrupt JPEG, no frames) is
dropped and counted without shifting the batches after it.

This module reads records and composes the per-clip transforms of vidtx.data.transforms:
`train_example` (sample, decode, augment, `repeated_aug` copies) and `eval_example` (the
eval_clips x eval_crops views).
"""

import io
import json
import math
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ logging quiet

from absl import logging  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vidtx.errors import ConfigError, DataNotFoundError  # pylint: disable=g-import-not-at-top
from vidtx.data import transforms  # pylint: disable=g-import-not-at-top

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_STRING_KEY = "clip/label/string"
METADATA = "metadata.json"
LABELS = "labels.json"  # class names: a JSON list, index = label
MAX_CYCLE_LENGTH = 16  # files read in parallel; fixed (never AUTOTUNE) so the order is fixed
READ_BUFFER_BYTES = 256 << 10
fold_in = tf.random.experimental.stateless_fold_in


def _hide_accelerators_from_tf():
  """The input pipeline runs on CPU; the accelerators belong to JAX."""
  tf.get_logger().setLevel("ERROR")
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices, or has no GPU support
    pass


_hide_accelerators_from_tf()


def shard_pattern(split):
  return f"{split}-*-of-*"


# ---------------------------------------------------------------------------------------------
# Writing shards (shared by the synthetic generator and the video converter).


def shard_name(split, index, count):
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def encode_jpeg(frame, quality, full_chroma=False):
  """uint8 [H, W, 3] -> JPEG bytes; full_chroma keeps colour at full resolution (4:4:4)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(frame)).save(buf, format="JPEG", quality=quality,
                                          subsampling=0 if full_chroma else 2)
  return buf.getvalue()


def make_example(jpeg_frames, label, label_string="", context=None):
  """A DMVR-layout tf.train.SequenceExample; `context` adds features {key: int|float|str}."""
  ex = tf.train.SequenceExample()
  ex.context.feature[LABEL_KEY].int64_list.value.append(int(label))
  ex.context.feature[LABEL_STRING_KEY].bytes_list.value.append(label_string.encode())
  for key, value in (context or {}).items():
    feature = ex.context.feature[key]
    if isinstance(value, str):
      feature.bytes_list.value.append(value.encode())
    elif isinstance(value, float):
      feature.float_list.value.append(value)
    else:
      feature.int64_list.value.append(int(value))
  frame_list = ex.feature_lists.feature_list[FRAMES_KEY]
  for data in jpeg_frames:
    frame_list.feature.add().bytes_list.value.append(data)
  return ex


def write_records(path, examples):
  """Writes serialisable examples to `path` atomically (temp name, then rename); returns the
  number written. The temp name starts with "." so readers never glob a partial shard."""
  directory, name = os.path.split(path)
  tmp = os.path.join(directory, f".tmp-{socket.gethostname()}-{os.getpid()}-{name}")
  count = 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for ex in examples:
      writer.write(ex.SerializeToString())
      count += 1
  os.replace(tmp, path)
  return count


def remove_stale_shards(data_dir, split, keep):
  """Removes shards of `split` not named in `keep` (left by a run with another shard count)."""
  for path in tf.io.gfile.glob(os.path.join(data_dir, shard_pattern(split))):
    if os.path.basename(path) not in keep:
      os.remove(path)


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


TFDS_PREFIX = "tfds:"  # config.data.name "tfds:<name>" reads a TFDS video dataset


def is_tfds(data_config) -> bool:
  return data_config.name.startswith(TFDS_PREFIX)


_BUILDERS = {}


def tfds_builder(data_config, data_dir):
  """The prepared TFDS builder of data.name "tfds:<name>" in `data_dir` ("" for TFDS's default
  directory). Raises DataNotFoundError saying how to prepare it."""
  name = data_config.name[len(TFDS_PREFIX):]
  if (name, data_dir) not in _BUILDERS:
    import tensorflow_datasets as tfds  # only TFDS datasets need it
    how = (f"Prepare it with `tfds build {name} --data_dir=<dir>` (or the dataset's "
           "instructions for manual downloads) and pass --config.data.data_dir=<dir>.")
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataNotFoundError(f"config.data.name={data_config.name!r}: {e}") from None
    if not builder.is_prepared():
      raise DataNotFoundError(f"config.data.name={data_config.name!r} is not prepared in "
                              f"{builder.data_dir}. {how}")
    _BUILDERS[name, data_dir] = builder
  return _BUILDERS[name, data_dir]


def _tfds_split(data_config, data_dir, split):
  splits = tfds_builder(data_config, data_dir).info.splits
  if split not in splits:
    raise DataNotFoundError(f"config.data.name={data_config.name!r} has no split {split!r}; "
                            f"it has {sorted(splits.keys())} (config.data.train_split, "
                            "eval_split)")
  return splits[split]


def split_files(data_config, data_dir, split):
  """The split's record files: DMVR shards, or a TFDS dataset's TFRecord files."""
  if is_tfds(data_config):
    return [os.fspath(p) for p in _tfds_split(data_config, data_dir, split).filepaths]
  return list_files(data_dir, split)


def record_parser(data_config):
  """serialized record -> (encoded frames [n] string, label int32): a DMVR SequenceExample, or
  a TFDS example (its video feature's frames left encoded, so only sampled frames decode)."""
  if not is_tfds(data_config):
    return parse_example
  import tensorflow_datasets as tfds
  video_key, label_key = data_config.tfds_features
  features = tfds_builder(data_config, data_config.data_dir).info.features

  def parse(serialized):
    example = features.deserialize_example(
        serialized, decoders={video_key: tfds.decode.SkipDecoding()})
    return example[video_key], tf.cast(example[label_key], tf.int32)
  return parse


def tfds_num_classes(data_config, data_dir):
  """Classes of the TFDS dataset's label feature (a ClassLabel), after checking that its video
  feature is a Video (whose frames are stored encoded, so `record_parser` can leave them so)."""
  import tensorflow_datasets as tfds
  video_key, label_key = data_config.tfds_features
  features = tfds_builder(data_config, data_dir).info.features
  for key, kind in ((video_key, tfds.features.Video), (label_key, tfds.features.ClassLabel)):
    if key not in features or not isinstance(features[key], kind):
      kinds = {k: type(v).__name__ for k, v in features.items()}
      raise ConfigError(f"config.data.tfds_features={tuple(data_config.tfds_features)!r}: "
                        f"{key!r} is not a {kind.__name__} feature of {data_config.name!r}; its "
                        f"features are {kinds}")
  return features[label_key].num_classes


def class_names(data_config, data_dir):
  """The class names, index = label: a TFDS dataset's ClassLabel names, else labels.json."""
  if is_tfds(data_config):
    _, label_key = data_config.tfds_features
    return list(tfds_builder(data_config, data_dir).info.features[label_key].names)
  return load_class_names(data_dir)


def load_metadata(data_dir):
  """The converter's metadata.json in `data_dir` (see the module docstring), or {}."""
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
  for counts in load_metadata(data_dir).get("shard_counts", {}).values():
    known.update(counts)
  return [known[os.path.basename(f)] if os.path.basename(f) in known else _count_records(f)
          for f in files]


def num_examples(data_config, split, data_dir):
  """Total number of examples in `split` (all hosts together)."""
  if is_tfds(data_config):
    return _tfds_split(data_config, data_dir, split).num_examples
  count = load_metadata(data_dir).get("splits", {}).get(split)
  if count is not None:
    return int(count)
  return sum(_file_counts(data_dir, list_files(data_dir, split)))


def _host_counts(data_config, data_dir, split, files, process_count):
  """Number of records of every host; a single host may use the metadata split count."""
  if is_tfds(data_config):
    counts = _tfds_split(data_config, data_dir, split).shard_lengths
    return [sum(counts[p::process_count]) for p in range(process_count)]
  if process_count == 1:
    count = load_metadata(data_dir).get("splits", {}).get(split)
    if count is not None:
      return [int(count)]
  counts = _file_counts(data_dir, files)
  return [sum(counts[p::process_count]) for p in range(process_count)]


# ---------------------------------------------------------------------------------------------
# Per-example processing (pure TF, usable inside tf.data maps; the transforms are in
# vidtx.data.transforms).


def parse_example(serialized):
  """Returns (encoded JPEG frames [n] string, label int32)."""
  context, sequence = tf.io.parse_single_sequence_example(
      serialized,
      context_features={LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
      sequence_features={FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  return sequence[FRAMES_KEY], tf.cast(context[LABEL_KEY], tf.int32)


def sample_frames(data_config, num_available, key=None, num_clips=1):
  """Frame indices by config.data.sampler: train [T] with a key, else eval [num_clips, T]."""
  cfg = data_config
  if cfg.sampler == "segment":
    return transforms.segment_indices(num_available, cfg.num_frames, key, num_clips)
  return transforms.dense_indices(num_available, cfg.num_frames, cfg.frame_stride, key,
                                  num_clips)


# fold_in index of each augmentation under a clip's key, so each draws independently.
_AUGMENTATIONS = ("crop", "resize", "flip", "randaugment", "color_jitter", "random_erasing")


def augment(data_config, frames, label, key, flip_table=None):
  """Train augmentation of decoded frames [T, H, W, 3] -> (float32 [T, S, S, 3], label).

  Order: crop (and resize), flip, RandAugment, colour jitter, normalise, random erasing. The
  label changes only when flip="swap_labels" mirrors a left/right class.
  """
  cfg = data_config
  sub = lambda name: fold_in(key, _AUGMENTATIONS.index(name))
  if cfg.train_crop == "random_resized":
    x = transforms.random_resized_crop(frames, cfg.crop_size, sub("crop"), cfg.crop_scale,
                                       cfg.crop_ratio)
  else:
    short = cfg.min_resize
    if cfg.max_resize:  # scale jitter
      short = tf.random.stateless_uniform([], sub("resize"), cfg.min_resize, cfg.max_resize + 1,
                                          dtype=tf.int32, alg="philox")
    x = transforms.random_crop(transforms.resize_short_side(frames, short), cfg.crop_size,
                               sub("crop"))
  if cfg.flip != "none":
    x, label = transforms.random_flip(x, label, sub("flip"), flip_table)
  if cfg.randaugment_layers:
    x = transforms.randaugment(x, sub("randaugment"), cfg.randaugment_layers,
                               cfg.randaugment_magnitude)
  if cfg.color_jitter:
    x = transforms.color_jitter(x, sub("color_jitter"), cfg.color_jitter)
  x = transforms.normalize(x, cfg.mean, cfg.std)
  if cfg.random_erasing:
    x = transforms.random_erasing(x, sub("random_erasing"), cfg.random_erasing)
  return x, label


def train_example(data_config, serialized, key, flip_table=None):
  """One record -> `repeated_aug` augmented clips (video float32 [k, T, S, S, 3], label [k]).

  The frames are sampled (key fold_in 0) and decoded once; copy j augments them with its own
  key (fold_in 1, then j), as VideoMAE's num_sample does. Only the sampled frames are decoded.
  `flip_table` (transforms.flip_table) is needed for flip="swap_labels".
  """
  cfg = data_config
  encoded, label = record_parser(cfg)(serialized)
  indices = sample_frames(cfg, tf.shape(encoded)[0], key=fold_in(key, 0))
  frames = transforms.decode_frames(tf.gather(encoded, indices))
  frames.set_shape([cfg.num_frames, None, None, 3])
  copies = [augment(cfg, frames, label, fold_in(fold_in(key, 1), j), flip_table)
            for j in range(cfg.repeated_aug)]
  return tf.stack([video for video, _ in copies]), tf.stack([label for _, label in copies])


def num_views(data_config):
  """Evaluation views per video: eval_clips x eval_crops."""
  return data_config.eval_clips * data_config.eval_crops


def centre_view(data_config):
  """Index of the single-view reference among the views: the middle clip (the earlier of the
  two middle ones for an even eval_clips), centre crop; for an odd eval_clips it equals the
  eval_clips=1, eval_crops=1 view."""
  cfg = data_config
  return (cfg.eval_clips - 1) // 2 * cfg.eval_crops + (cfg.eval_crops - 1) // 2


def eval_example(data_config, serialized):
  """One record -> (video float32 [V, T, S, S, 3], label), V = num_views.

  Views are clip-major: view k * eval_crops + c is clip k (sample_frames) and spatial crop c
  (transforms.spatial_crops) of the frames resized to short side eval_resize (0: min_resize).
  Frames shared by several clips are decoded once.
  """
  encoded, label = record_parser(data_config)(serialized)
  return eval_views(data_config, encoded), label


def eval_views(data_config, encoded):
  """The views of `eval_example` of encoded frames [n] string (JPEG or PNG)."""
  cfg = data_config
  indices = sample_frames(cfg, tf.shape(encoded)[0], num_clips=cfg.eval_clips)
  unique, position = tf.unique(tf.reshape(indices, [-1]))
  frames = tf.gather(transforms.decode_frames(tf.gather(encoded, unique)), position)
  frames = transforms.resize_short_side(frames, cfg.eval_resize or cfg.min_resize)
  shape = tf.shape(frames)
  clips = tf.reshape(frames, [cfg.eval_clips, cfg.num_frames, shape[1], shape[2], 3])
  views = transforms.spatial_crops(clips, cfg.crop_size, cfg.eval_crops)  # [C, K, T, S, S, 3]
  views = tf.reshape(tf.transpose(views, [1, 0, 2, 3, 4, 5]),
                     [num_views(cfg), cfg.num_frames, cfg.crop_size, cfg.crop_size, 3])
  return transforms.normalize(views, cfg.mean, cfg.std)


def load_class_names(data_dir):
  """The class names of the dataset in `data_dir`, from its labels.json (index = label)."""
  path = os.path.join(data_dir, LABELS)
  if not tf.io.gfile.exists(path):
    raise DataNotFoundError(
        f"config.data.flip='swap_labels' needs the class names in {path} (a JSON list, index = "
        "label) to find the left/right class pairs; write that file, or set config.data.flip "
        "to 'random' or 'none'.")
  with tf.io.gfile.GFile(path) as f:
    names = json.load(f)
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"{path} must hold a JSON list of class names (strings), index = label.")
  return names


# ---------------------------------------------------------------------------------------------
# Datasets.

PARALLEL_BATCHES = 4  # batches decoded at the same time (fixed, so the order is fixed)


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
    records = _read_records(order).batch(cfg.shuffle_buffer).enumerate().map(
        lambda i, block: tf.random.experimental.stateless_shuffle(
            block, fold_in(fold_in(key, 1), i))).unbatch()
    records = records.take(batches_per_epoch * records_per_batch).enumerate()
    # Resuming: drop the already-consumed records of the first epoch before decoding them.
    skip = tf.where(epoch == first_epoch, np.int64(skip_batches * records_per_batch),
                    np.int64(0))
    return records.skip(skip).map(
        lambda index, record: (fold_in(fold_in(key, 2), index), record)).batch(
            records_per_batch)

  def process(key, record):
    video, label = train_example(cfg, record, key, flip_table)
    return {"video": video, "label": label}

  def fill(batch):
    clip = [cfg.num_frames, cfg.crop_size, cfg.crop_size, 3]
    video, label = tf.reshape(batch["video"], [-1, *clip]), tf.reshape(batch["label"], [-1])
    valid = tf.shape(label)[0]
    check = tf.debugging.assert_positive(valid, message=(
        f"All {records_per_batch} records of a train batch failed to decode: the data is "
        "probably not DMVR-layout JPEG frames; try vidtx.data.dmvr.train_example on one record "
        "to see the error."))
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
    video, label = eval_example(data_config, record)
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
  shape = clip if num_views(cfg) == 1 else (num_views(cfg), *clip)
  slots = np.arange(batch_size)
  yielded = 0
  for batch in ds.as_numpy_iterator():
    n, records = len(batch["label"]), int(batch["records"])
    pad = [(0, batch_size - n)]
    video = batch["video"].reshape((n, *shape))
    yield {"video": np.pad(video, pad + [(0, 0)] * len(shape)),
           "label": np.pad(batch["label"], pad),
           "mask": (slots < n).astype(np.float32),
           "skipped": ((slots >= n) & (slots < records)).astype(np.float32)}
    yielded += 1
  for _ in range(num_batches - yielded):
    yield {"video": np.zeros((batch_size, *shape), np.float32),
           "label": np.zeros((batch_size,), np.int32),
           "mask": np.zeros((batch_size,), np.float32),
           "skipped": np.zeros((batch_size,), np.float32)}


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
  > 1 views (see eval_example); "skipped" is 1 in the slots of records that failed to decode.
  Every host yields the same number of batches.
  `data_dir` defaults to config.data.data_dir (pass the value returned by `prepare`).
  """
  cfg = data_config
  check_config(cfg)
  data_dir = data_dir or cfg.data_dir
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  if is_tfds(cfg):
    data_dir = cfg.data_dir  # "" is TFDS's default directory
  elif not data_dir:
    raise ValueError("config.data.data_dir is empty: pass data_dir=prepare(config.data, workdir) "
                     "to build().")
  files = split_files(cfg, data_dir, split)
  mine = host_files(files, process_index, process_count)
  if split == cfg.train_split:
    if batch_size % cfg.repeated_aug:
      raise ConfigError(f"config.data.repeated_aug={cfg.repeated_aug}: must divide the batch of "
                        f"{batch_size} clips per host, which holds whole groups of copies")
    flip_table = None
    if cfg.flip == "swap_labels":
      names = class_names(cfg, data_dir)
      if len(names) != cfg.num_classes:
        source = "TFDS label feature" if is_tfds(cfg) else LABELS
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
