"""Checks converted DMVR shards against a config before a run trains on them.

  python -m vidtx.data.check --config=configs/videomae_k400.py \\
      --config.data.data_dir=/data/k400_tfrecords [--split=train,validation] [--num_examples=8]

For each split (default: config.data.train_split and config.data.eval_split) it prints the
number of records (metadata.json against the files), the stored frame counts and frame sizes of
the first records, the clips the training pipeline (vidtx.data.pipeline.build) makes of them with
eval processing and, for the train split, train processing, the label range against
config.data.num_classes, and the label map (labels.json) if present. It exits with an error that
names the problem when shards are missing, record counts disagree with metadata.json, a record
does not parse or has no frames, or a label is out of range. --nofull reads only the first
--num_examples records of each split instead of every record (faster, checks less).
"""

import copy
import json
import os
import re

import numpy as np
import tensorflow as tf
from absl import app, flags

from vidtx import cli, errors
from vidtx.data import pipeline, records, tfds_datasets


class CheckError(errors.ConfigError):
  """The data cannot train this config; the message names the problem and the fix (a
  ConfigError, so the commands report it in one line)."""


def _shard_numbers(files, split):
  """Raises CheckError unless the files are shards 0..n-1 of one count n."""
  found = {}
  for path in files:
    match = re.fullmatch(rf"{re.escape(split)}-(\d+)-of-(\d+)(\.tfrecord)?",
                         os.path.basename(path))
    if not match:
      raise CheckError(f"{path}: not a shard name <split>-<k>-of-<n>.tfrecord")
    found.setdefault(int(match[2]), set()).add(int(match[1]))
  if len(found) > 1:
    raise CheckError(f"split {split!r} mixes shard counts {sorted(found)} (shards of two "
                     "conversions): delete the stale ones or convert again")
  (count, indices), = found.items()
  missing = sorted(set(range(count)) - indices)
  if missing:
    raise CheckError(f"split {split!r} has {len(indices)} of its {count} shards; missing e.g. "
                     f"{records.shard_name(split, missing[0], count)}: the conversion did not "
                     "finish; run the converter again (it resumes)")


def _parse(record):
  context, sequence = tf.io.parse_single_sequence_example(
      record, context_features={records.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
      sequence_features={records.FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  return context[records.LABEL_KEY], tf.shape(sequence[records.FRAMES_KEY], out_type=tf.int64)[0]


def _scan(path, limit=None):
  """(labels, frame counts) of the records of one shard (the first `limit` of them)."""
  ds = records.record_dataset(path)
  if limit is not None:
    ds = ds.take(limit)
  ds = ds.map(_parse, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  labels, frames = [np.zeros([0], np.int64)], [np.zeros([0], np.int64)]
  try:
    for label, count in ds.as_numpy_iterator():
      labels.append(label)
      frames.append(count)
  except tf.errors.OpError as e:
    raise CheckError(f"{path}: a record does not read or parse as a DMVR SequenceExample "
                     f"({e.message.splitlines()[0]}); convert this split again") from None
  return np.concatenate(labels), np.concatenate(frames)


def _raw_examples(files, num_examples):
  """The first records' stored contents: frames, first frame size, label, string, source, rate."""
  out = []
  for path in files:
    for record in tf.data.TFRecordDataset(path).take(num_examples - len(out)):
      ex = tf.train.SequenceExample.FromString(record.numpy())
      context = ex.context.feature
      frames = ex.feature_lists.feature_list[records.FRAMES_KEY].feature
      size = tuple(tf.io.decode_jpeg(frames[0].bytes_list.value[0]).shape[:2]) if frames else None

      def text(key, context=context):
        return context[key].bytes_list.value[0].decode() if key in context else ""

      out.append(dict(
          file=os.path.basename(path), frames=len(frames), size=size,
          label=context[records.LABEL_KEY].int64_list.value[0],
          label_string=text(records.LABEL_STRING_KEY), source=text(records.SOURCE_KEY),
          rate=(context[records.FRAME_RATE_KEY].float_list.value[0]
                if records.FRAME_RATE_KEY in context else None)))
    if len(out) == num_examples:
      break
  return out


def _first_batch(data_config, split, batch_size, *, train):
  """The first batch the training pipeline makes of `split`, with train or eval processing."""
  cfg = copy.deepcopy(data_config)
  if train:
    cfg.shuffle_buffer = min(cfg.shuffle_buffer, batch_size)  # same clips, less reading
    copies = cfg.get("repeated_aug", 1)  # a train batch holds whole groups of augmented copies
    batch_size = max(batch_size - batch_size % copies, copies)
  try:
    return next(iter(pipeline.build(cfg, split, train=train, batch_size=batch_size, seed=0)))
  except tf.errors.OpError as e:
    raise CheckError(f"the training pipeline fails on split {split!r} "
                     f"({'train' if train else 'eval'} processing): "
                     f"{e.message.splitlines()[0]}") from None


def _describe_batch(batch):
  lines = []
  for key, value in sorted(batch.items()):
    value = np.asarray(value)
    line = f"{key} {value.dtype} {list(value.shape)}"
    if key == "video" and value.size:  # uint8 pixels: an all-black or flat video shows here
      line += f" min {value.min()} max {value.max()} mean {value.mean():.1f}"
    elif key == "label" and value.size:
      line += f" values {value.ravel()[:16].tolist()}"
    lines.append(line)
  return "; ".join(lines)


def _label_map(data_dir, num_classes):
  path = os.path.join(data_dir, records.LABELS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    names = json.load(f)
  if len(names) != num_classes:
    raise CheckError(f"{path} lists {len(names)} classes, but config.data.num_classes="
                     f"{num_classes}: set --config.data.num_classes={len(names)}")
  return names


def check_split(data_config, split, *, num_examples=8, full=True, out=print):
  """Checks one split (see the module docstring); returns its record count."""
  cfg, data_dir = data_config, data_config.data_dir
  files = records.list_files(data_dir, split)
  _shard_numbers(files, split)
  path = os.path.join(data_dir, records.METADATA)
  metadata = {}
  if os.path.exists(path):
    with open(path) as f:
      metadata = json.load(f)
  out(f"== split {split!r}: {len(files)} shards in {data_dir}")

  labels, frames = [], []
  for file in files:
    file_labels, file_frames = _scan(file, limit=None if full else num_examples - len(labels))
    labels.extend(file_labels)
    frames.extend(file_frames)
    if full:
      want = metadata.get("shard_counts", {}).get(split, {}).get(os.path.basename(file))
      if want is not None and want != len(file_labels):
        raise CheckError(f"{file} has {len(file_labels)} records, but {records.METADATA} says "
                         f"{want}: the shard was rewritten after the metadata; convert again")
      if file_frames.size and file_frames.min() == 0:
        raise CheckError(f"{file}: record {int(np.argmin(file_frames))} has no frames; the "
                         "pipeline cannot sample a clip from it. Convert this split again.")
    elif len(labels) >= num_examples:
      break
  labels, frames = np.array(labels, np.int64), np.array(frames, np.int64)
  stated = metadata.get("splits", {}).get(split)
  if full:
    if stated is not None and stated != len(labels):
      raise CheckError(f"split {split!r}: {records.METADATA} says {stated} records, the shards "
                       f"hold {len(labels)}: convert again")
    out(f"records: {len(labels)} counted, {stated if stated is not None else 'no'} in "
        f"{records.METADATA}")
  else:
    out(f"records: {stated if stated is not None else '?'} in {records.METADATA} "
        f"(not counted: --nofull)")
  if not len(labels):
    raise CheckError(f"split {split!r} has no records")
  if frames.min() == 0:
    raise CheckError(f"split {split!r}: {np.sum(frames == 0)} of the records read have no "
                     "frames; the pipeline cannot sample a clip from them. Convert again.")
  if labels.min() < 0 or labels.max() >= cfg.num_classes:
    bad = labels.max() if labels.max() >= cfg.num_classes else labels.min()
    raise CheckError(f"split {split!r} has label {bad}, outside [0, config.data.num_classes="
                     f"{cfg.num_classes}): set --config.data.num_classes={labels.max() + 1} "
                     "if the data is right, or convert with the right label map")
  window = (cfg.num_frames - 1) * cfg.frame_stride + 1
  out(f"labels: {labels.min()}..{labels.max()}, {len(np.unique(labels))} of "
      f"{cfg.num_classes} classes present in the {len(labels)} records read")
  out(f"frames per record: min {frames.min()}, median {int(np.median(frames))}, max "
      f"{frames.max()}; {np.sum(frames < window)} shorter than the {window}-frame sampling "
      "window (they loop)")

  names = _label_map(data_dir, cfg.num_classes)
  for ex in _raw_examples(files, num_examples):
    out(f"  {ex['file']}: {ex['frames']} frames of {ex['size'][0]}x{ex['size'][1]}"
        + (f" at {ex['rate']:g} fps" if ex["rate"] else "") + f", label {ex['label']}"
        + (f" {ex['label_string']!r}" if ex["label_string"] else "")
        + (f" from {ex['source']}" if ex["source"] else ""))
    if names and ex["label_string"] and names[ex["label"]] != ex["label_string"]:
      raise CheckError(f"{ex['file']}: a record of label {ex['label']} is named "
                       f"{ex['label_string']!r}, but {records.LABELS} calls {ex['label']} "
                       f"{names[ex['label']]!r}: the label map belongs to another conversion")

  batch = min(num_examples, len(labels))
  out(f"eval processing: {_describe_batch(_first_batch(cfg, split, batch, train=False))}")
  if split == cfg.train_split:
    out(f"train processing: {_describe_batch(_first_batch(cfg, split, batch, train=True))}")
  failures = os.path.join(data_dir, f"{split}_failures.csv")
  if os.path.exists(failures):
    with open(failures) as f:
      failed = sum(1 for _ in f) - 1
    out(f"videos that failed to convert: {failed} (see {failures})")
  return len(labels)


def check(data_config, splits=None, *, num_examples=8, full=True, out=print):
  """Checks `splits` (default: the train and eval splits); returns {split: records read}."""
  if tfds_datasets.is_tfds(data_config):
    raise CheckError(f"config.data.name={data_config.name!r}: this checks DMVR shards written by "
                     "vidtx.data.convert_videos; TFDS datasets are checked by TFDS when they are "
                     "built")
  if not data_config.data_dir:
    raise CheckError("config.data.data_dir is empty: pass --config.data.data_dir=<the "
                     "converter's --output_dir>")
  if num_examples < 1:
    raise CheckError(f"--num_examples={num_examples}: must be at least 1")
  pipeline.check_config(data_config)
  names = _label_map(data_config.data_dir, data_config.num_classes)
  if names:
    out(f"label map {records.LABELS}: {len(names)} classes: "
        + ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:5])) + (", ..." if len(names) > 5
                                                                       else ""))
  splits = splits or list(dict.fromkeys([data_config.train_split, data_config.eval_split]))
  return {split: check_split(data_config, split, num_examples=num_examples, full=full, out=out)
          for split in splits}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing the checker defines no flags."""
  cli.define_config("Experiment config file (as for vidtx.main); its data fields are checked. "
                    "Override with --config.data.<field>=<value>.", flag_values)
  flags.DEFINE_list("split", [], "Splits to check; default: config.data.train_split and "
                    "config.data.eval_split.", flag_values=flag_values)
  flags.DEFINE_integer("num_examples", 8, "Records shown and processed per split.",
                       flag_values=flag_values)
  flags.DEFINE_bool("full", True, "Read every record (counts, labels, frame counts); --nofull "
                    "reads only --num_examples per split.", flag_values=flag_values)
  flags.mark_flag_as_required("config", flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  counts = check(f.config.data, f.split or None, num_examples=f.num_examples, full=f.full)
  print(f"OK: {counts}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
