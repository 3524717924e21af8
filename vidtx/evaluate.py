"""Evaluation: one pass over the eval split; top-1/top-5 and loss (or, for pre-training, the
reconstruction error) over the real examples."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vidtx import models, sharding
from vidtx.models import masking


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k highest logits."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = how many classes score strictly higher; ties count in the label's favour.
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def make_eval_step(setup):
  """jit: (state, batch) -> sums over the unmasked examples of the metrics, and their count.

  Classifiers: loss, top-1 and top-5 (plus their own extras). Pre-training models: the
  reconstruction error on masks drawn from a fixed key, so evaluations compare.
  `setup` is the `vidtx.train.Setup` of the run (config, graphdef, shardings, mesh).
  """
  config = setup.config
  classifies = models.classifies(config.model)

  def eval_step(state, batch):
    model, _ = nnx.merge(setup.graphdef, state)
    labels, mask = batch["label"], batch["mask"]
    key = None if classifies else jax.random.key(config.seed)
    keep = masking.for_config(config.model, config.data, key, labels.shape[0])
    logits, aux = model(batch["video"], train=False, keep=keep)
    per_example = {k: v for k, v in aux.items() if k != "loss"}
    if logits is not None:
      per_example.update(
          loss=optax.softmax_cross_entropy_with_integer_labels(logits, labels),
          top1=topk_correct(logits, labels, 1), top5=topk_correct(logits, labels, 5))
    sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
    return {**sums, "count": jnp.sum(mask)}

  return jax.jit(eval_step, in_shardings=(setup.state_shardings, setup.batch_sharding),
                 out_shardings=sharding.replicated(setup.mesh))


def evaluate(eval_step, state, batches, batch_sharding) -> dict[str, float]:
  """Runs `eval_step` over host-local `batches`; returns each metric's mean and the count."""
  totals = None
  for batch in batches:
    sums = eval_step(state, sharding.to_global(batch, batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
  count = totals.pop("count")
  return {**{k: v / count for k, v in totals.items()}, "num_examples": count}
