"""Video data: the synthetic motion dataset and the DMVR TFRecord input pipeline.

The modules, from the disk up: records (the DMVR shard format), tfds_datasets (TFDS datasets as
a source of records), transforms (per-clip samplers and augmentations), clips (a record ->
training clips or evaluation views), pipeline (tf.data batches: `build`); video_files (reading
video files), convert_videos (video files -> shards), check (shards against a config), synthetic
(the generated dataset), mixup (Mixup/CutMix on device, in the train step).

Importing any of them runs this file first, which sets TensorFlow up once, before it is used:
quiet logs, and the accelerators hidden from it (they belong to JAX).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ logging quiet

import tensorflow as tf  # pylint: disable=g-import-not-at-top


def _hide_accelerators_from_tf():
  """The input pipeline runs on CPU; the accelerators belong to JAX."""
  tf.get_logger().setLevel("ERROR")
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices, or has no GPU support
    pass


_hide_accelerators_from_tf()  # before the modules below, which use TF

from vidtx.data import pipeline, records, synthetic, tfds_datasets  # pylint: disable=g-import-not-at-top
from vidtx.data.pipeline import build, num_examples  # pylint: disable=g-import-not-at-top
from vidtx.errors import DataNotFoundError  # pylint: disable=g-import-not-at-top

SYNTHETIC = "synthetic_motion"


def prepare(data_config, workdir):
  """Makes sure the dataset exists and returns its directory (pass it to `build`).

  synthetic_motion is generated on first use into config.data.data_dir, or into
  <workdir>/data/synthetic_motion when that is "". "tfds:<name>" must be prepared in TFDS's
  data_dir (config.data.data_dir; "" is TFDS's default). Other datasets must already be in
  config.data.data_dir; a DataNotFoundError says what is missing. Where the dataset names its
  classes, a config.data.num_classes of another count is a ConfigError with the count to set.
  """
  data_dir = _find_or_generate(data_config, workdir)
  pipeline.check_num_classes(data_config, data_dir)
  return data_dir


def _find_or_generate(data_config, workdir):
  if data_config.name == SYNTHETIC:
    return synthetic.prepare(data_config, workdir)
  if tfds_datasets.is_tfds(data_config):
    for split in (data_config.train_split, data_config.eval_split):
      # Raises saying how to prepare the dataset.
      tfds_datasets.split_files(data_config, data_config.data_dir, split)
    return data_config.data_dir
  how = (f"Prepare {data_config.name!r} as DMVR TFRecord shards (README, section Data) and pass "
         "--config.data.data_dir=<their directory>; or try this config on the built-in data "
         f"with --config.data.name={SYNTHETIC}.")
  if data_config.name == "custom":
    how = ("Convert your videos with python -m vidtx.data.convert_videos --format=folders "
           "--video_root=<videos>/ (<split>/<class>/<video>) --output_dir=<shards> and pass "
           "--config.data.data_dir=<shards> (README, Training on your own videos).")
  if not data_config.data_dir:
    raise DataNotFoundError(
        f"Dataset {data_config.name!r} is read from disk, but config.data.data_dir is empty, so "
        f"there is nowhere to look. {how}")
  try:
    for split in (data_config.train_split, data_config.eval_split):
      records.list_files(data_config.data_dir, split)  # raises naming the missing files
  except DataNotFoundError as e:
    raise DataNotFoundError(f"Dataset {data_config.name!r} is not prepared: {e} {how}") from None
  return data_config.data_dir


__all__ = ["build", "prepare", "num_examples", "SYNTHETIC"]
