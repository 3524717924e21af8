"""Parameters and multiply-adds per view, counted from the compiled XLA program.

  python -m vidtx.tools.flops --config=configs/demo.py [--config.model.size=B ...] [--json]

One view is one clip of the configured size through the evaluation forward pass (with
cell_running masking: the fixed test-time mask; MAR's decoder runs only in training, so it is
not counted). Pre-training models are counted with their decoder on a training mask. Nothing is materialised: the model is built
abstractly and only compiled, so ViT-H counts cost no memory. MACs = XLA's flops / 2, as
fvcore and MMAction2's get_flops report them; a convolution counts every kernel tap, those on
its zero padding too, as they (and PyTorch's FlopCounterMode) do: XLA's cost analysis skips
those, which at video sizes is 3-12% of a 3-D CNN (R3D-18 at 16x112: 36.0 against 40.7 GMACs);
an error function (the exact GELU's) counts no flops, as exp and tanh (`ERF_FUNCTIONS`).
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
    jaxpr = jax.make_jaxpr(forward)(state, video).jaxpr
    padding = padding_macs(jaxpr)
  flops = (float(lowered.compile().cost_analysis()["flops"]) + 2 * padding
           - sum(n * erf_flops(*key) for key, n in erf_elements(jaxpr).items()))
  return {"params": layers.count_params(nnx.state(abstract, nnx.Param)),
          "gmacs": flops / 2e9, "gflops": flops / 1e9}


# Error functions (the exact GELU's), which XLA counts as a polynomial of some 60 flops per
# element (erfc: expanded when lowered) or none (erf), where exp and tanh are one transcendental
# and no flop. `count` takes them out of the flops, so the exact GELU costs what the tanh one
# does and a model's count is near the references' (matmuls and convolutions).
ERF_FUNCTIONS = {"erf": jax.lax.erf, "erfc": jax.lax.erfc}


def erf_flops(name: str, dtype) -> float:
  """XLA's flops per element of error function `name` (a key of ERF_FUNCTIONS) in `dtype`."""
  x = jax.ShapeDtypeStruct((4096,), dtype)
  compiled = jax.jit(ERF_FUNCTIONS[name]).lower(x).compile()
  return float(compiled.cost_analysis().get("flops", 0)) / 4096


def erf_elements(jaxpr) -> dict:
  """{(name, dtype): the elements that error function computes} in `jaxpr`, sub-jaxprs included
  as `padding_macs` counts them."""
  total = {}
  for eqn in jaxpr.eqns:
    for name, value in eqn.params.items():
      subs = [v.jaxpr if isinstance(v, jax.extend.core.ClosedJaxpr) else v
              for v in (value if isinstance(value, (tuple, list)) else (value,))]
      counts = [erf_elements(v) for v in subs if isinstance(v, jax.extend.core.Jaxpr)]
      for c in counts[:1] if name == "branches" else counts:
        for key, n in c.items():
          total[key] = total.get(key, 0) + n * eqn.params.get("length", 1)
    if eqn.primitive.name in ERF_FUNCTIONS:
      aval = eqn.outvars[0].aval
      key = (eqn.primitive.name, aval.dtype)
      total[key] = total.get(key, 0) + int(np.prod(aval.shape))
  return total


def padding_macs(jaxpr) -> int:
  """The multiply-adds of the convolutions in `jaxpr` whose kernel taps fall on the zero
  padding, which XLA's cost analysis leaves out (sub-jaxprs included: a scan's body counts
  `length` times, a conditional its costliest branch)."""
  total = 0
  for eqn in jaxpr.eqns:
    for name, value in eqn.params.items():
      subs = [v.jaxpr if isinstance(v, jax.extend.core.ClosedJaxpr) else v
              for v in (value if isinstance(value, (tuple, list)) else (value,))]
      counts = [padding_macs(v) for v in subs if isinstance(v, jax.extend.core.Jaxpr)]
      if counts:
        total += (max(counts) if name == "branches" else sum(counts)) * eqn.params.get("length", 1)
    if eqn.primitive.name != "conv_general_dilated" or any(
        d != 1 for d in eqn.params["lhs_dilation"]):  # (transposed convolutions: not counted)
      continue
    p, dn = eqn.params, eqn.params["dimension_numbers"]
    lhs, rhs = (x.aval.shape for x in eqn.invars)
    out = eqn.outvars[0].aval.shape
    taps = inside = 1
    for i, (low, _) in enumerate(p["padding"]):
      n, k, o = lhs[dn.lhs_spec[2 + i]], rhs[dn.rhs_spec[2 + i]], out[dn.out_spec[2 + i]]
      position = (np.arange(o)[:, None] * p["window_strides"][i] - low
                  + np.arange(k)[None, :] * p["rhs_dilation"][i])  # [output, tap] input index
      taps *= o * k
      inside *= int(((position >= 0) & (position < n)).sum())
    # Per tap: input channels per group x output channels x batch.
    per_tap = (rhs[dn.rhs_spec[0]] * rhs[dn.rhs_spec[1]] * lhs[dn.lhs_spec[0]]
               // p["batch_group_count"])
    total += (taps - inside) * per_tap
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
