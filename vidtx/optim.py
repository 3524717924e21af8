"""Optimizer: AdamW (or SGD, `optim.name`) with linear warm-up and cosine (or step) decay,
weight decay on matrices only, optional layer-wise lr decay, per-group lr scales and frozen
parameters.

Parameter groups are picked by regular expressions over a parameter's path, its names joined
by "/" as `param_path` writes them, e.g. "encoder/blocks/3/attn/qkv" or "head/kernel".
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vidtx import errors


def schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up, then cosine decay to min_lr; or with `lr_drops` a step schedule, lr x
  factor from each (fraction of total_steps, factor) on (PySlowFast's relative-lr steps)."""
  o = optim_config
  if not o.lr_drops:
    return optax.warmup_cosine_decay_schedule(
        init_value=o.warmup_init_lr, peak_value=o.lr, warmup_steps=o.warmup_steps,
        decay_steps=total_steps, end_value=o.min_lr)
  drops = sorted((round(fraction * total_steps), factor) for fraction, factor in o.lr_drops)

  def lr(step):
    factor = 1.0
    for start, drop in drops:
      factor = jnp.where(step >= start, drop, factor)
    warm = o.warmup_init_lr + (o.lr - o.warmup_init_lr) * step / max(o.warmup_steps, 1)
    return jnp.where(step < o.warmup_steps, warm, o.lr * factor)
  return lr


def decay_mask(params):
  """Decay kernels and matrices (rank >= 2); not biases, norms, position embeddings, CLS,
  relative position bias tables (Swin, TPS)."""
  def decays(path, x):
    names = {str(getattr(k, "key", k)) for k in path}
    return x.ndim >= 2 and not names & {"pos_embed", "cls_token", "relative_position_bias_table"}
  return jax.tree_util.tree_map_with_path(decays, params)


def param_path(path) -> str:
  """"encoder/blocks/3/attn/qkv" for a tree path into the parameters."""
  names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
  return "/".join(names[:-1] if names and names[-1] == "value" else names)


def _labels(patterns, params, field: str, label, default):
  """A tree of `label(i)` for the first pattern i that matches each parameter's path, else
  `default`. A pattern that matches nothing is an error: it is almost always a typo."""
  paths = {}
  jax.tree_util.tree_map_with_path(lambda p, x: paths.setdefault(param_path(p), None), params)
  for pattern in patterns:
    if not any(re.search(pattern, p) for p in paths):
      raise ValueError(f"config.optim.{field}: {pattern!r} matches no parameter; paths look "
                       f"like {sorted(paths)[:3]}")

  def pick(path, x):
    del x
    p = param_path(path)
    return next((label(i) for i, pattern in enumerate(patterns) if re.search(pattern, p)),
                default)
  return jax.tree_util.tree_map_with_path(pick, params)


def scale_by_lr_scales(lr_scales) -> optax.GradientTransformation:
  """Multiplies each update by the scale of the first (pattern, scale) in `lr_scales` that
  matches its parameter's path; 1 where none does. Weight decay is scaled too, as with lr."""
  def update(updates, state, params=None):
    del params
    scales = _labels([p for p, _ in lr_scales], updates, "lr_scales",
                     lambda i: float(lr_scales[i][1]), 1.0)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_layer_decay(decay: float, depth: int, layer_of) -> optax.GradientTransformation:
  """Multiplies each update by decay^(depth + 1 - i), i = layer_of(the parameter's path names,
  depth): the lr of layer i, as BEiT and VideoMAE scale it (weight decay included, since it
  runs before this). `layer_of` is the model family's numbering (`Family.layer_of`)."""
  def update(updates, state, params=None):
    del params
    layer = lambda path: layer_of(tuple(param_path(path).split("/")), depth)
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * decay ** (depth + 1 - layer(path)), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


OPTIMIZERS = ("adamw", "sgd")


def check_config(optim_config: ml_collections.ConfigDict, total_steps: int, family) -> None:
  """config.optim for a run of `total_steps` steps of a model of `family`
  (`vidtx.models.family.Family`, whose layer_decay_depth says whether it has layer decay)."""
  o = optim_config
  if o.name not in OPTIMIZERS:
    errors.fail("optim.name", o.name, f"choose one of {OPTIMIZERS}")
  if o.lr <= 0:
    errors.fail("optim.lr", o.lr, "must be positive")
  if o.warmup_steps >= total_steps:  # the cosine needs at least one step
    errors.fail("optim.warmup_steps", o.warmup_steps, f"must be below total_steps={total_steps}")
  for entry in o.lr_drops:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2 or not 0 < entry[0] < 1
        or not entry[1] > 0):
      errors.fail("optim.lr_drops", o.lr_drops, "give (fraction of total_steps in (0, 1), lr "
                  "factor > 0) pairs, e.g. ((0.52, 0.1), (0.96, 0.01))")
  if not 0 < o.layer_decay <= 1:
    errors.fail("optim.layer_decay", o.layer_decay, "must be in (0, 1]; 1.0 turns it off")
  if o.layer_decay < 1 and family.layer_decay_depth is None:
    errors.fail("optim.layer_decay", o.layer_decay, "layer-wise lr decay is not supported for "
                f"model.name={family.name!r}, which numbers no layers: keep 1.0 "
                "(optim.lr_scales sets per-group lrs)")
  for entry in o.lr_scales:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[1], (int, float)) or entry[1] < 0):
      errors.fail("optim.lr_scales", o.lr_scales, "give (pattern, scale) pairs with scale >= 0, "
                  "e.g. (('^backbone/', 0.1),)")
  for field, patterns in (("optim.lr_scales", [e[0] for e in o.lr_scales]),
                          ("optim.frozen", o.frozen)):
    for pattern in patterns:
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        errors.fail(field, pattern, f"not a regular expression ({e})")


def build(optim_config: ml_collections.ConfigDict, total_steps: int, depth: int = 0,
          layer_of=None):
  """The optimizer `optim.name`; layer decay numbers the parameters' layers by `layer_of`
  (the model family's `Family.layer_of`) in a model of `depth` blocks."""
  o = optim_config
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  if o.name == "sgd":  # torch.optim.SGD: L2 weight decay added to the gradient, then momentum
    parts += [optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
              optax.sgd(schedule(o, total_steps), momentum=o.momentum, nesterov=o.nesterov)]
  else:
    parts.append(optax.adamw(schedule(o, total_steps), b1=o.b1, b2=o.b2,
                             weight_decay=o.weight_decay, mask=decay_mask))
  if o.layer_decay < 1:
    if layer_of is None:
      raise ValueError("optim.layer_decay < 1 needs the model family's layer numbering")
    parts.append(scale_by_layer_decay(o.layer_decay, depth, layer_of))
  if o.lr_scales:
    parts.append(scale_by_lr_scales(tuple(o.lr_scales)))
  tx = optax.chain(*parts)
  if not o.frozen:
    return tx
  # Frozen parameters get no optimizer state at all (no Adam moments), and a zero update.
  labels = lambda params: _labels(tuple(o.frozen), params, "frozen", lambda i: "frozen", "train")
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
