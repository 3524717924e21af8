"""Evaluation: one pass over the eval split, metrics over the real examples.

Classifiers: loss, top-1 and top-5 of the single centre view (middle clip, centre crop) under
plain names and, with V = eval_clips x eval_crops > 1 views per video, of the softmax averaged
over the views under names ending in the views, e.g. top1_5x3. Pre-training models: the
reconstruction error of the centre view. Records that failed to decode, or were lost in a shard
that ends early, count in num_skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from vidtx import builder, data, models, sharding
from vidtx.data import clips, on_device
from vidtx.models import masking


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k highest scores (logits or probabilities)."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = how many classes score strictly higher; ties count in the label's favour.
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def views_name(data_config) -> str:
  """The suffix of the multi-view metrics, e.g. "5x3" for 5 clips x 3 crops."""
  return f"{data_config.eval_clips}x{data_config.eval_crops}"


def classification_metrics(logits, labels):
  """Per-example loss, top1 and top5 of logits [b, classes]."""
  logits = logits.astype(jnp.float32)
  return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
          "top1": topk_correct(logits, labels, 1), "top5": topk_correct(logits, labels, 5)}


def averaged_view_metrics(logits, labels, name: str):
  """loss_<name>, top1_<name>, top5_<name> of the mean softmax of every video's views, from
  logits [b, V, classes]; the loss is the mean softmax's negative log-probability of the label."""
  probs = jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=1)
  label_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  return {f"loss_{name}": -jnp.log(jnp.maximum(label_prob, jnp.finfo(jnp.float32).tiny)),
          f"top1_{name}": topk_correct(probs, labels, 1),
          f"top5_{name}": topk_correct(probs, labels, 5)}


def describe(metrics: dict[str, float]) -> str:
  """The headline numbers of a metrics dict, as a log line fragment."""
  names = {"top1": "top-1", "top5": "top-5", "loss": "loss", "recon_mse": "reconstruction MSE"}
  parts = [f"{label} {metrics[k]:.4f}" for k, label in names.items() if k in metrics]
  # Multi-view evaluation: top1_<clips>x<crops>, e.g. top1_5x3.
  parts += [f"top-1 over {k.removeprefix('top1_')} views {v:.4f}" for k, v in metrics.items()
            if k.startswith("top1_")]
  for k in ("num_skipped", "skipped_records"):
    if metrics.get(k):
      parts.append(f"{metrics[k]:.0f} records skipped (corrupt, or lost in a damaged shard)")
  return ", ".join(parts)


def make_eval_step(setup):
  """jit: (state, batch) -> sums over the unmasked examples of the metrics, their count and the
  number of skipped records.

  batch["video"] is uint8 [b, T, S, S, 3], or [b, V, T, S, S, 3] with V > 1 views
  (vidtx.data.build); the views are normalised and run one after the other (a lax.map), so
  memory stays that of one view. Pre-training models see only the centre view, masked from a
  fixed key so evaluations compare.
  `setup` is the `vidtx.builder.Setup` of the run (config, graphdef, shardings, mesh).
  """
  config = setup.config
  classifies = models.classifies(config.model)
  multi_view = clips.num_views(config.data) > 1
  centre = clips.centre_view(config.data)

  def run(state, video):
    model = nnx.merge(setup.graphdef, state)["model"]
    video = on_device.eval_clips(config.data, video)
    key = None if classifies else jax.random.key(config.seed)
    keep = masking.for_config(config.model, config.data, key, video.shape[0])
    logits, aux = model(video, train=False, keep=keep)
    return logits, {k: v for k, v in aux.items() if k != "loss"}

  def eval_step(state, batch):
    labels, mask, video = batch["label"], batch["mask"], batch["video"]
    if multi_view and classifies:
      logits, aux = jax.lax.map(lambda view: run(state, view), jnp.swapaxes(video, 0, 1))
      per_example = {k: v[centre] for k, v in aux.items()}
      per_example.update(classification_metrics(logits[centre], labels))
      per_example.update(averaged_view_metrics(jnp.swapaxes(logits, 0, 1), labels,
                                               views_name(config.data)))
    else:
      logits, per_example = run(state, video[:, centre] if multi_view else video)
      if logits is not None:
        per_example.update(classification_metrics(logits, labels))
    sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
    skipped = jnp.sum(batch["skipped"]) if "skipped" in batch else jnp.float32(0)
    return {**sums, "count": jnp.sum(mask), "num_skipped": skipped}

  return jax.jit(eval_step, in_shardings=(setup.state_shardings, setup.batch_sharding),
                 out_shardings=sharding.replicated(setup.mesh))


def evaluate(eval_step, state, batches, batch_sharding) -> dict[str, float]:
  """Runs `eval_step` over host-local `batches`; returns each metric's mean over the examples,
  num_examples and num_skipped (records that failed to decode)."""
  totals = None
  for batch in batches:
    sums = eval_step(state, sharding.to_global(batch, batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
  count, skipped = totals.pop("count"), totals.pop("num_skipped")
  if count == 0:
    raise ValueError(f"no evaluation example decoded ({skipped:.0f} records skipped): check the "
                     "eval split's data")
  return {**{k: v / count for k, v in totals.items()}, "num_examples": count,
          "num_skipped": skipped}


def eval_batches(setup: builder.Setup, data_dir: str):
  """This process's batches of the eval split (see vidtx.data.build)."""
  config = setup.config
  batch_size = (config.eval_batch_size or config.batch_size) // jax.process_count()
  return data.build(config.data, config.data.eval_split, train=False, batch_size=batch_size,
                    seed=config.seed, process_index=jax.process_index(),
                    process_count=jax.process_count(), data_dir=data_dir)


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """Evaluates the latest checkpoint in `workdir`; returns {"step", **metrics}."""
  setup = builder.build(config)
  sharding.check_processes_agree("config", config.to_json())
  state, meta = builder.restore_state(setup, workdir)
  data_dir = builder.prepare_data(config, workdir)
  with jax.set_mesh(setup.mesh):
    eval_step = make_eval_step(setup)
    metrics = evaluate(eval_step, state, eval_batches(setup, data_dir), setup.batch_sharding)
  logging.info("eval of step %d over %d clips: %s", meta["step"], metrics["num_examples"],
               describe(metrics))
  return {"step": meta["step"], **metrics}
