"""Parameters and multiply-adds per view, counted from the compiled XLA program.

  python -m vidtx.tools.flops --config=configs/demo.py [--config.model.size=B ...] [--json]

One view is one clip of the configured size through the evaluation forward pass (with
cell_running masking: the fixed test-time mask; MAR's decoder runs only in training, so it is
not counted). Pre-training models are counted with their decoder on a training mask. Nothing is materialised: the model is built
abstractly and only compiled, so ViT-H counts cost no memory. MACs = XLA's flops / 2, as
fvcore and MMAction2's get_flops report them.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from flax import nnx

from vidtx import cli, configuration, models
from vidtx.models import layers, masking


def count(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{"params", "gmacs", "gflops"} of one view of `config`'s model."""
  configuration.validate(config, num_devices=1, num_processes=1)
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  d = config.data
  video = jax.ShapeDtypeStruct((1, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32)

  def forward(state, video):
    # Pre-training models are counted on a training mask (decoder included).
    key = None if models.classifies(config.model) else jax.random.key(0)
    keep = masking.for_config(config.model, config.data, key, 1)
    return nnx.merge(graphdef, state)(video, keep=keep)

  with layers.xla_attention():
    lowered = jax.jit(forward).lower(state, video)
  flops = float(lowered.compile().cost_analysis()["flops"])
  return {"params": layers.count_params(nnx.state(abstract, nnx.Param)),
          "gmacs": flops / 2e9, "gflops": flops / 1e9}


def main(argv):
  del argv
  c = flags.FLAGS.config
  result = count(c)
  if flags.FLAGS.json:
    print(json.dumps(result))
  else:
    print(f"model {c.model.name} ({c.model.size}, attention {c.model.attention}), "
          f"{c.data.num_frames}x{c.data.crop_size}^2, masking {c.model.masking} "
          f"{c.model.mask_ratio}")
    print(f"parameters      {result['params']:,} ({result['params'] / 1e6:.1f}M)")
    print(f"GMACs per view  {result['gmacs']:.4g}  (compiled XLA cost analysis)")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing tools side by side works."""
  cli.define_config("Experiment config file[:variant].", flag_values)
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.",
                    flag_values=flag_values)
  flags.mark_flag_as_required("config", flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
