"""A video file in, top-k labels out, through exactly the evaluation preprocessing.

  python -m vidtx.predict --workdir=RUN --video=clip.mp4 [--top_k=5]
  python -m vidtx.predict --workdir=RUN --video=folder/ --output=predictions.csv

The file is decoded and stored as the converter stores a training video
(`vidtx.data.video_files`: short side, frame rate and JPEG quality from the run's dataset
metadata.json, else the converter's defaults), then goes through the evaluation processing
(`vidtx.data.clips.eval_views`: the same sampler, resize, crops and normalisation,
`data.eval_clips` x `data.eval_crops` views) and the model; probabilities are the softmax
averaged over the views, as multi-view evaluation does. Class names come from the dataset's
labels.json (a TFDS dataset's label feature, if prepared).
A folder gives one CSV row per video; videos that cannot be read get their error in the row and
do not stop the others.
"""

import csv
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import flags, logging
from flax import nnx

from vidtx import builder, cli, configuration, errors, models
from vidtx.data import clips, on_device, records, tfds_datasets, video_files
from vidtx.models import masking

DEFAULT_CONVERSION = {"short_side": 256, "fps": 0.0, "jpeg_quality": 90}


def run_data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the run read its data (the synthetic data is generated into the workdir)."""
  return config.data.data_dir or os.path.join(workdir, "data", config.data.name)


def _read_json(path):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def conversion_settings(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """How the run's dataset stored its videos (metadata.json), else the converter's defaults."""
  metadata = _read_json(os.path.join(run_data_dir(config, workdir), records.METADATA)) or {}
  return {**DEFAULT_CONVERSION, **metadata.get("settings", {})}


def class_names(config: ml_collections.ConfigDict, workdir: str):
  """The dataset's class names (index = label), or None where it has none here."""
  tfds = tfds_datasets.is_tfds(config.data)  # read from TFDS's data_dir, where "" is its default
  try:
    return tfds_datasets.class_names(config.data, config.data.data_dir if tfds
                                     else run_data_dir(config, workdir))
  except errors.DataNotFoundError:  # no labels.json, or the TFDS dataset is not on this machine
    return None


def file_views(config: ml_collections.ConfigDict, conversion: dict, path: str) -> np.ndarray:
  """float32 [views, T, S, S, 3] of the video file, as evaluation would see it.
  Raises video_files.VideoError naming what is wrong with the file."""
  frames, _ = video_files.read_video(path, **conversion)
  views = clips.eval_views(config.data, tf.constant(frames, tf.string)).numpy()
  return np.asarray(on_device.eval_clips(config.data, views))


class Predictor:
  """The model of a trained run and the evaluation preprocessing of its config."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    if not models.classifies(config.model):
      raise errors.ConfigError(
          f"this model.name={config.model.name!r} config is a pre-training model and predicts "
          f"no labels: {models.family(config.model).logits_fix}")
    self.config = config
    model, self.step = builder.restore_model(config, workdir)
    self.labels = class_names(config, workdir)
    self.conversion = conversion_settings(config, workdir)
    graphdef, params = nnx.split(model)
    num_views = clips.num_views(config.data)

    @jax.jit
    def probabilities(params, views):
      keep = masking.for_config(config.model, config.data, None, num_views)
      logits, _ = nnx.merge(graphdef, params)(views, train=False, keep=keep)
      return jax.nn.softmax(logits).mean(axis=0)

    self._probabilities = lambda views: probabilities(params, views)

  def views(self, path: str) -> np.ndarray:
    return file_views(self.config, self.conversion, path)

  def predict(self, path: str) -> np.ndarray:
    """Class probabilities [classes] of the video file, averaged over its views."""
    return self.probabilities(self.views(path))

  def probabilities(self, views: np.ndarray) -> np.ndarray:
    """Class probabilities [classes] of a video's `views`, averaged over them."""
    return np.asarray(self._probabilities(jnp.asarray(views)))

  def name(self, index: int) -> str:
    return self.labels[index] if self.labels else str(index)

  def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(self.name(i), float(probabilities[i])) for i in order]


def video_paths(folder: str) -> list[str]:
  """The video files under `folder`, sorted."""
  return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                for name in names if name.lower().endswith(video_files.VIDEO_EXTENSIONS))


def predict_folder(predictor: Predictor, folder: str, output, k: int) -> tuple[int, int]:
  """Writes one CSV row per video file under `folder`: path, top-k labels and probabilities,
  or the error. Returns (videos predicted, videos that failed)."""
  paths = video_paths(folder)
  writer = csv.writer(output)
  writer.writerow(["path"] + [f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "prob")]
                  + ["error"])
  failed = 0
  for n, path in enumerate(paths, 1):
    try:
      best = predictor.top_k(predictor.predict(path), k)
      writer.writerow([path] + [x for label, p in best for x in (label, f"{p:.6f}")] + [""])
    except video_files.VideoError as e:
      failed += 1
      writer.writerow([path] + [""] * (2 * k) + [str(e)])
    logging.log_every_n_seconds(logging.INFO, "Predicted %d of %d videos (%d failed).", 10, n,
                                len(paths), failed)
  return len(paths) - failed, failed


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  cli.define_config("Config; default: the run's config.json.", flag_values)
  flags.DEFINE_string("workdir", None, "Workdir of the trained run.", required=True,
                      flag_values=flag_values)
  flags.DEFINE_string("video", None, "A video file, or a folder of them.", required=True,
                      flag_values=flag_values)
  flags.DEFINE_integer("top_k", 5, "How many labels to show per video.", flag_values=flag_values)
  flags.DEFINE_string("output", "", "CSV file for a folder's predictions; default: stdout.",
                      flag_values=flag_values)


def main(argv):
  del argv
  f = flags.FLAGS
  # The inputs first: a typo fails at once, not after the model has loaded.
  cli.check_readable("video", f.video)
  if f.output:
    cli.check_writable("output", f.output, file=True)
  config = f.config or configuration.from_workdir(f.workdir)
  if os.path.isdir(f.video):
    if not video_paths(f.video):
      raise errors.FlagError(f"--video={f.video} holds no video files "
                             f"({', '.join(video_files.VIDEO_EXTENSIONS)})")
    predictor = Predictor(config, f.workdir)
    with (open(f.output, "w", newline="") if f.output else sys.stdout) as out:
      done, failed = predict_folder(predictor, f.video, out, f.top_k)
    logging.info("Predicted %d videos; %d could not be read (see the error column).", done,
                 failed)
  else:
    try:
      views = file_views(config, conversion_settings(config, f.workdir), f.video)
    except video_files.VideoError as e:
      raise errors.FlagError(f"{f.video}: {e}") from None
    predictor = Predictor(config, f.workdir)
    for label, p in predictor.top_k(predictor.probabilities(views), f.top_k):
      print(f"{p:8.4f}  {label}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
