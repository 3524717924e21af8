"""Parameters and multiply-adds per view, counted from the traced program.

  python -m vidtx.tools.flops --config=configs/demo.py [--config.model.size=B ...] [--json]

One view is one clip of the configured size through the evaluation forward pass (with
cell_running masking: the fixed test-time mask; MAR's decoder runs only in training, so it is
not counted). Pre-training models are counted with their decoder on a training mask.
MACs are those of the convolutions (every kernel tap, those on the zero padding too) and the
matrix products (attention's included), as fvcore, MMAction2's get_flops and PyTorch's
FlopCounterMode count the papers' "GFLOPs": the element-wise work (normalisation, activations,
softmax, residual sums) is left out, as there. Nothing is compiled or materialised: the model
is built abstractly and traced, so ViT-H counts cost no memory and take seconds.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from vidtx import cli, configuration, models
from vidtx.models import layers, masking


def count(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{"params", "gmacs"} of one view of `config`'s model (see the module docstring)."""
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

  # Convolutions traced as convolutions (on CPUs they run as matrix products and shifted sums).
  with layers.xla_attention(), layers.convolutions():
    jaxpr = jax.make_jaxpr(forward)(state, video).jaxpr
  return {"params": layers.count_params(nnx.state(abstract, nnx.Param)),
          "gmacs": matmul_macs(jaxpr) / 1e9}


def matmul_macs(jaxpr) -> int:
  """The multiply-adds of the convolutions (every kernel tap, those on the padding too; a
  transposed one's taps on its inserted zeros not) and matrix products in `jaxpr`, sub-jaxprs
  included: a scan's body counts `length` times, a conditional its costliest branch."""
  total = 0
  for eqn in jaxpr.eqns:
    for name, value in eqn.params.items():
      subs = [v.jaxpr if isinstance(v, jax.extend.core.ClosedJaxpr) else v
              for v in (value if isinstance(value, (tuple, list)) else (value,))]
      counts = [matmul_macs(v) for v in subs if isinstance(v, jax.extend.core.Jaxpr)]
      if counts:
        total += (max(counts) if name == "branches" else sum(counts)) * eqn.params.get("length", 1)
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if eqn.primitive.name == "conv_general_dilated":
      p, dn = eqn.params, eqn.params["dimension_numbers"]
      rhs = eqn.invars[1].aval.shape
      # Per output value: the kernel's taps x its input channels (per group).
      taps = int(np.prod([rhs[i] for i in dn.rhs_spec[1:]]))
      total += (int(np.prod(out)) * taps // int(np.prod(p["lhs_dilation"]))
                // p["batch_group_count"])
    elif eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += int(np.prod(out)) * int(np.prod([lhs[i] for i in contracting]))
  return total


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
    print(f"GMACs per view  {result['gmacs']:.4g}  (convolutions and matrix products)")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing tools side by side works."""
  cli.define_config("Experiment config file[:variant].", flag_values)
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.",
                    flag_values=flag_values)
  flags.mark_flag_as_required("config", flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
