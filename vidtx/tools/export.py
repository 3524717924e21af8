"""Exports a trained classifier for serving: serialized StableHLO and a TensorFlow SavedModel.

  python -m vidtx.tools.export --workdir=RUN --output=DIR [--format=both|stablehlo|saved_model]
      [--config=configs/x.py ...]   # default: the config.json the run wrote

The exported function takes uint8 RGB clips [batch, T, S, S, 3], sampled and cropped as the
evaluation does (config.data: num_frames frames, the eval crop's pixels), for any batch size, and
returns float32 logits [batch, classes]; the normalisation happens inside. DIR gets:
- `model.stablehlo`: `jax.export` serialization with the weights inside. Load it with
  `jax.export.deserialize(open(path, "rb").read()).call(frames)`; no vidtx needed.
- `saved_model/`: for TensorFlow serving, through jax2tf; signature `serving_default`,
  input `frames`, output `logits`. Load with `tf.saved_model.load`.
- `export.json`: the input the model expects and its classes (from the dataset's labels.json
  when the run's data directory has one).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from flax import nnx

from vidtx import builder, cli, configuration, errors, models, predict
from vidtx.data import clips, on_device, records
from vidtx.models import masking

FORMATS = ("stablehlo", "saved_model")


def logits_fn(model: nnx.Module, config: ml_collections.ConfigDict):
  """(params, fn): fn(params, uint8 frames [b, T, S, S, 3]) -> float32 logits [b, classes],
  the evaluation forward pass (MAR: on its fixed test mask)."""
  check_classifies(config)
  graphdef, params = nnx.split(model)

  def fn(params, frames):
    video = on_device.eval_clips(config.data, frames)
    keep = masking.for_config(config.model, config.data, None, frames.shape[0])
    logits, _ = nnx.merge(graphdef, params)(video, train=False, keep=keep)
    return logits

  return params, fn


def check_classifies(config: ml_collections.ConfigDict) -> None:
  """Raises errors.ConfigError for a pre-training model: it has no logits to export."""
  if not models.classifies(config.model):
    raise errors.ConfigError(
        f"this model.name={config.model.name!r} config is a pre-training model: it has no "
        f"logits to export: {models.family(config.model).logits_fix}")


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  size = clips.eval_crop_size(config.data)
  return (config.data.num_frames, size, size, 3)


def export_stablehlo(model, config) -> jax.export.Exported:
  """The forward pass with its weights as constants, for any batch size."""
  params, fn = logits_fn(model, config)
  frames = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b")
                                + input_shape(config), jnp.uint8)
  return jax.export.export(jax.jit(lambda f: fn(params, f)))(frames)


def save_saved_model(model, config, path: str) -> None:
  """A TensorFlow SavedModel whose weights are tf.Variables (so large models stay under the
  2 GB graph limit)."""
  import tensorflow as tf
  from jax.experimental import jax2tf  # the only route from JAX to a SavedModel; tools only

  params, fn = logits_fn(model, config)
  leaves, treedef = jax.tree.flatten(params)
  module = tf.Module()
  # A plain list, so the SavedModel tracks the variables.
  module.weights = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]
  converted = jax2tf.convert(fn, polymorphic_shapes=[None, "(b, ...)"], with_gradient=False)

  @tf.function(input_signature=[tf.TensorSpec((None, *input_shape(config)), tf.uint8,
                                              name="frames")], autograph=False)
  def serve(frames):
    return {"logits": converted(jax.tree.unflatten(treedef, module.weights), frames)}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})


def labels_of(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
  """Class names from labels.json in the run's data directory, if it has one."""
  path = os.path.join(predict.run_data_dir(config, workdir), records.LABELS)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def export(config: ml_collections.ConfigDict, workdir: str, output: str,
           formats=FORMATS) -> dict:
  """Writes the formats of the latest checkpoint of `workdir` into `output`; returns the
  contents of export.json."""
  unknown = set(formats) - set(FORMATS)
  if unknown:
    raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {FORMATS}")
  check_classifies(config)  # before the checkpoint loads
  model, step = builder.restore_model(config, workdir)
  os.makedirs(output, exist_ok=True)
  if "stablehlo" in formats:
    with open(os.path.join(output, "model.stablehlo"), "wb") as f:
      f.write(export_stablehlo(model, config).serialize())
  if "saved_model" in formats:
    save_saved_model(model, config, os.path.join(output, "saved_model"))
  d = config.data
  info = {"step": step, "model": config.model.name, "input": {
      "frames_uint8_rgb": [None, *input_shape(config)], "num_frames": d.num_frames,
      "frame_stride": d.frame_stride, "short_side": d.eval_resize or d.min_resize,
      "crop_size": clips.eval_crop_size(d),
      "mean": list(d.mean), "std": list(d.std)},
      "num_classes": d.num_classes, "labels": labels_of(config, workdir)}
  with open(os.path.join(output, "export.json"), "w") as f:
    json.dump(info, f, indent=2)
  logging.info("Exported step %d of %s to %s (%s).", step, workdir, output, ", ".join(formats))
  return info


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  cli.define_config("Config; default: the run's config.json.", flag_values)
  flags.DEFINE_string("workdir", None, "Workdir of the trained run.", required=True,
                      flag_values=flag_values)
  flags.DEFINE_string("output", None, "Directory to write the export into.", required=True,
                      flag_values=flag_values)
  flags.DEFINE_enum("format", "both", ["both", *FORMATS], "What to write.",
                    flag_values=flag_values)


def main(argv):
  del argv
  f = flags.FLAGS
  cli.check_writable("output", f.output)
  config = f.config or configuration.from_workdir(f.workdir)
  export(config, f.workdir, f.output, FORMATS if f.format == "both" else (f.format,))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
