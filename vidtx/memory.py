"""Device memory of a training run: an estimate before compiling, XLA's own figures after.

The estimate is per device: parameters and optimizer state from their shapes and shardings,
activations from what autodiff saves for the backward pass of one micro-batch (traced
abstractly, so it costs no memory and counts whatever the model and `model.remat` keep). XLA
may fuse some saved values away and needs scratch space of its own; the compiled program's
figures are the ones that hold.
"""

import collections
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vidtx.models import masking


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of the arrays (ShapeDtypeStructs with shardings) in `tree`."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _saved_activation_bytes(setup) -> int:
  """Bytes autodiff keeps for the backward pass of one micro-batch (all devices together).

  The residuals of `jax.vjp` also include the parameters the backward pass reads (and their
  compute-dtype copies, maybe reshaped); one residual per parameter size is not counted, as the
  parameters are counted on their own.
  """
  config = setup.config
  batch = config.batch_size // config.grad_accum_steps
  d = config.data
  video = jax.ShapeDtypeStruct((batch, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32)

  def backward_residuals(state, video):
    model = nnx.merge(setup.graphdef, state)["model"]
    graphdef, params = nnx.split(model)
    key = jax.random.key(0)
    keep = masking.for_config(config.model, d, key, batch)

    def forward(params):
      logits, aux = nnx.merge(graphdef, params)(video, train=True, key=key, keep=keep)
      loss = jnp.sum(aux.get("loss", 0.0))
      return loss if logits is None else loss + jnp.sum(logits)

    return params, jax.vjp(forward, params)[1]

  params, residuals = jax.eval_shape(backward_residuals, setup.abstract_state, video)
  unclaimed = collections.Counter(math.prod(p.shape) for p in jax.tree.leaves(params))
  total = 0
  for r in jax.tree.leaves(residuals):
    if unclaimed[math.prod(r.shape)]:
      unclaimed[math.prod(r.shape)] -= 1
    else:
      total += math.prod(r.shape) * jnp.dtype(r.dtype).itemsize
  return total


def estimate(setup) -> dict[str, int]:
  """Bytes per device before compiling: params, optimizer state, saved activations."""
  model_state, optimizer_state = setup.abstract_state["model"], setup.abstract_state["optimizer"]
  batch_devices = math.prod(setup.mesh.shape[a] for a in setup.config.mesh.batch_axes)
  return {
      "params": _bytes_per_device(model_state),
      "optimizer": _bytes_per_device(optimizer_state),
      # Activations split with the batch over the batch axes (tensor parallelism splits them
      # further; not counted, so this is an upper bound there).
      "activations": _saved_activation_bytes(setup) // batch_devices,
  }


def compiled(compiled_step) -> dict[str, int]:
  """Bytes per device of a compiled program (`jax.jit(f).lower(...).compile()`), from XLA."""
  stats = compiled_step.memory_analysis()
  if stats is None:  # some backends do not report
    return {}
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
  return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
          "donated": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
          "peak": peak}


def describe(sizes: dict[str, int]) -> str:
  return ", ".join(f"{name} {size / 2**30:.2f} GiB" if size >= 2**30 else
                   f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
