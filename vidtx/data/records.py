"""The on-disk DMVR layout: TFRecord shards of tf.train.SequenceExample, one record per clip.

Layout: JPEG frames in the feature list "image/encoded", the label in the context feature
"clip/label/index"; shards named "<split>-<k>-of-<n>[.tfrecord]" in one directory, beside an
optional labels.json (the class names, a JSON list, index = label). Record counts are needed for
the train epochs (and for multi-host eval); they are read from an optional metadata.json,
{"splits": {"train": 1000, ...}, "shard_counts": {"train": {"train-00000-of-00004.tfrecord": 250,
...}, ...}}, and otherwise counted by reading the files once per process.

A shard that ends early (truncated by a copy that did not finish, or damaged from some record on)
is read up to the damage: the input pipeline uses the records before it and counts the rest as
skipped, naming the shard once in the log (`report_damaged`).

Writing the layout is shared by the synthetic generator and the video converter; reading it by
the input pipeline (vidtx.data.pipeline), the checker and the tools.
"""

import io
import json
import os
import socket

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from vidtx.errors import DataNotFoundError

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_STRING_KEY = "clip/label/string"
# Context features the video converter adds; the pipeline does not read them.
SOURCE_KEY = "clip/source"  # the video's path relative to the converter's --video_root
FRAME_RATE_KEY = "clip/frame_rate"
METADATA = "metadata.json"
LABELS = "labels.json"  # class names: a JSON list, index = label
READ_BUFFER_BYTES = 256 << 10
# A TFRecord holds its data plus 16 bytes: its length (8 bytes) and two CRCs (4 each).
RECORD_OVERHEAD_BYTES = 16


def shard_pattern(split):
  return f"{split}-*-of-*"


def shard_name(split, index, count):
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


# ---------------------------------------------------------------------------------------------
# Writing shards (shared by the synthetic generator and the video converter).


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


# ---------------------------------------------------------------------------------------------
# Reading shards.


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


def record_dataset(path):
  """The records of one file, as serialized strings; a damaged file raises DataLossError."""
  return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)


def readable_records(path):
  """The records of one file up to the first one that cannot be read (a truncated or damaged
  file), without error: TFRecordDataset gives up a file at its first read error."""
  return record_dataset(path).ignore_errors()


_REPORTED = set()


def report_damaged(path):
  """Logs once per process that the shard `path` ends early, and what that costs."""
  if path not in _REPORTED:
    _REPORTED.add(path)
    logging.warning(
        "%s is truncated or damaged: its records after the damage cannot be read, so they are "
        "skipped (counted in train/skipped_records and eval num_skipped); copy or convert this "
        "shard again.", path)


def parse_example(serialized):
  """Returns (encoded JPEG frames [n] string, label int32)."""
  context, sequence = tf.io.parse_single_sequence_example(
      serialized,
      context_features={LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
      sequence_features={FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  return sequence[FRAMES_KEY], tf.cast(context[LABEL_KEY], tf.int32)


def load_metadata(data_dir):
  """The converter's metadata.json in `data_dir` (see the module docstring), or {}."""
  path = os.path.join(data_dir, METADATA)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


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


_COUNT_CACHE = {}


def _count_records(path):
  """Counts the records of one file by reading it (cached; only done without metadata). A file
  whose readable records end before the file does lost at least the record cut at the damage,
  which counts as one record (the pipeline then counts it as skipped)."""
  key = (path, tf.io.gfile.stat(path).length)
  if key not in _COUNT_CACHE:
    logging.info("Counting records in %s (add shard_counts to %s to skip this).", path, METADATA)
    options = tf.data.Options()
    options.autotune.enabled = False  # its thread can hold the end up (see pipeline._options)
    count, size = readable_records(path).with_options(options).reduce(
        (np.int64(0), np.int64(0)), lambda state, record: (
            state[0] + 1, state[1] + RECORD_OVERHEAD_BYTES
            + tf.cast(tf.strings.length(record), tf.int64)))
    count = int(count)
    if int(size) < key[1]:
      report_damaged(path)
      count += 1
    _COUNT_CACHE[key] = count
  return _COUNT_CACHE[key]


def file_counts(data_dir, files):
  """Record count per file, from metadata.json "shard_counts" where listed, else by counting."""
  known = {}
  for counts in load_metadata(data_dir).get("shard_counts", {}).values():
    known.update(counts)
  return [known[os.path.basename(f)] if os.path.basename(f) in known else _count_records(f)
          for f in files]
