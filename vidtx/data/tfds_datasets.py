"""TFDS video datasets as a source of records, beside the DMVR shards of vidtx.data.records.

config.data.name "tfds:<name>" reads a prepared TFDS dataset from its TFDS data_dir
(config.data.data_dir, "" for TFDS's default) through the same samplers, transforms and batching
as DMVR shards: its records are parsed into the same (encoded frames, label) pair, its video
feature's frames left encoded so that only the sampled frames decode. config.data.tfds_features
names its Video and ClassLabel features. The functions that take a data config answer for both
sources: a DMVR dataset goes to vidtx.data.records.
"""

import os

import tensorflow as tf

from vidtx.data import records
from vidtx.errors import ConfigError, DataNotFoundError

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


def tfds_split(data_config, data_dir, split):
  """The TFDS split info of `split` (its files and record counts); raises DataNotFoundError
  naming the splits the dataset has."""
  splits = tfds_builder(data_config, data_dir).info.splits
  if split not in splits:
    raise DataNotFoundError(f"config.data.name={data_config.name!r} has no split {split!r}; "
                            f"it has {sorted(splits.keys())} (config.data.train_split, "
                            "eval_split)")
  return splits[split]


def split_files(data_config, data_dir, split):
  """The split's record files: DMVR shards, or a TFDS dataset's TFRecord files."""
  if is_tfds(data_config):
    return [os.fspath(p) for p in tfds_split(data_config, data_dir, split).filepaths]
  return records.list_files(data_dir, split)


def record_parser(data_config):
  """serialized record -> (encoded frames [n] string, label int32): a DMVR SequenceExample, or
  a TFDS example (its video feature's frames left encoded, so only sampled frames decode)."""
  if not is_tfds(data_config):
    return records.parse_example
  import tensorflow_datasets as tfds
  video_key, label_key = data_config.tfds_features
  features = tfds_builder(data_config, data_config.data_dir).info.features

  def parse(serialized):
    example = features.deserialize_example(
        serialized, decoders={video_key: tfds.decode.SkipDecoding()})
    return example[video_key], tf.cast(example[label_key], tf.int32)
  return parse


def label_feature(data_config, data_dir):
  """The TFDS dataset's label feature (a ClassLabel), after checking that its video feature is a
  Video (whose frames are stored encoded, so `record_parser` can leave them so)."""
  import tensorflow_datasets as tfds
  video_key, label_key = data_config.tfds_features
  features = tfds_builder(data_config, data_dir).info.features
  for key, kind in ((video_key, tfds.features.Video), (label_key, tfds.features.ClassLabel)):
    if key not in features or not isinstance(features[key], kind):
      kinds = {k: type(v).__name__ for k, v in features.items()}
      raise ConfigError(f"config.data.tfds_features={tuple(data_config.tfds_features)!r}: "
                        f"{key!r} is not a {kind.__name__} feature of {data_config.name!r}; its "
                        f"features are {kinds}")
  return features[label_key]


def class_names(data_config, data_dir):
  """The class names, index = label: a TFDS dataset's ClassLabel names, else labels.json."""
  if is_tfds(data_config):
    return list(label_feature(data_config, data_dir).names)
  return records.load_class_names(data_dir)
