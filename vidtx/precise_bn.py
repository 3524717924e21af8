"""Precise BatchNorm (PySlowFast, after "Rethinking Batch in BatchNorm", Wu & Johnson 2021).

During training the running averages of BatchNorm mix statistics of many past weights. Before
an evaluation, precise BN replaces them by the population statistics of each layer's input
under the current weights, over config.model.bn.precise_batches training batches (augmented
as in training): the mean of the batch means, and the mean of the batch variances plus the
variance of the batch means (the variance of all the batches' values together, as fvcore's
`update_bn_stats` estimates it for equal batches).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vidtx import sharding
from vidtx.data import on_device
from vidtx.models import layers, masking


class PreciseBatchNorm:
  """Recomputes a training state's BatchNorm statistics; compiled once per run."""

  def __init__(self, setup):
    config = setup.config
    preprocess = on_device.sharded_train_clips(config.data, setup.mesh,
                                               setup.batch_sharding.spec)

    def moments(state, batch, rng, step, index):
      """[(mean, biased variance)] of each BatchNorm layer's input over the batch."""
      model = nnx.merge(setup.graphdef, state)["model"]
      norms = layers.batchnorms(model)
      for bn in norms:  # the batch's own statistics, over the whole batch, kept as they are
        bn.momentum, bn.unbiased_var, bn.group_size = 1.0, False, 0
      key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), step), index)
      data_key, model_key = jax.random.split(key)
      video = preprocess(batch["video"], data_key, jnp.arange(batch["video"].shape[0]))
      keep = masking.for_config(config.model, config.data, jax.random.fold_in(model_key, 1),
                                video.shape[0])
      model(video, train=True, key=model_key, keep=keep)
      return [(bn.mean[...], bn.var[...]) for bn in norms]

    def write(state, sums, num_batches):
      merged = nnx.merge(setup.graphdef, state)
      for bn, (mean, mean_square, var) in zip(layers.batchnorms(merged["model"]), sums):
        mean = mean / num_batches
        bn.mean[...] = mean
        bn.var[...] = var / num_batches + jnp.maximum(mean_square / num_batches - mean ** 2, 0)
      return nnx.state(merged)

    replicated = sharding.replicated(setup.mesh)
    self._moments = jax.jit(moments, in_shardings=(setup.state_shardings, setup.batch_sharding,
                                                   replicated, None, None))
    self._write = jax.jit(write, donate_argnums=0, out_shardings=setup.state_shardings)
    self._accumulate = jax.jit(lambda sums, m: [
        (s[0] + mean, s[1] + mean ** 2, s[2] + var) for s, (mean, var) in zip(sums, m)])

  def __call__(self, state: nnx.State, batches, num_batches: int, rng, step: int) -> nnx.State:
    """`state` (donated) with the statistics over the next `num_batches` device batches of the
    iterator `batches`; `rng` the run's replicated key data, `step` the training step (the
    augmentation's keys depend on both, so a resumed run recomputes the same statistics)."""
    sums = None
    for index in range(num_batches):
      m = self._moments(state, next(batches), rng, jnp.int32(step), jnp.int32(index))
      if sums is None:
        sums = [(jnp.zeros_like(mean),) * 3 for mean, _ in m]
      sums = self._accumulate(sums, m)
    return self._write(state, sums, jnp.float32(num_batches))
