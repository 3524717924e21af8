"""Evaluation: one pass over the eval split, top-1/top-5 and loss over the real examples."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vidtx import sharding
from vidtx.models import masking


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k highest logits."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = how many classes score strictly higher; ties count in the label's favour.
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def make_eval_step(setup):
  """jit: (state, batch) -> sums of loss, top-1, top-5 and count over unmasked examples.

  `setup` is the `vidtx.train.Setup` of the run (config, graphdef, shardings, mesh).
  """
  config = setup.config

  def eval_step(state, batch):
    model, _ = nnx.merge(setup.graphdef, state)
    keep = masking.for_config(config.model, config.data, None, batch["label"].shape[0])
    logits = model(batch["video"], train=False, keep=keep)
    labels, mask = batch["label"], batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(logits, labels, 5) * mask),
        "count": jnp.sum(mask),
    }

  return jax.jit(eval_step, in_shardings=(setup.state_shardings, setup.batch_sharding),
                 out_shardings=sharding.replicated(setup.mesh))


def evaluate(eval_step, state, batches, batch_sharding) -> dict[str, float]:
  """Runs `eval_step` over host-local `batches`; returns mean loss, top1, top5 and count."""
  totals = None
  for batch in batches:
    sums = eval_step(state, sharding.to_global(batch, batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
  count = totals.pop("count")
  return {**{k: v / count for k, v in totals.items()}, "num_examples": count}
