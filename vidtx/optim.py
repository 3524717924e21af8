"""Optimizer: AdamW with linear warm-up and cosine decay, weight decay on matrices only,
optional layer-wise lr decay."""

import jax
import ml_collections
import optax


def schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  o = optim_config
  return optax.warmup_cosine_decay_schedule(
      init_value=o.warmup_init_lr, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=total_steps, end_value=o.min_lr)


def decay_mask(params):
  """Decay kernels and matrices (rank >= 2); not biases, norms, position embeddings, CLS."""
  def decays(path, x):
    names = {str(getattr(k, "key", k)) for k in path}
    return x.ndim >= 2 and not names & {"pos_embed", "cls_token"}
  return jax.tree_util.tree_map_with_path(decays, params)


def layer_id(path, depth: int) -> int:
  """0 for the encoder's embeddings, n + 1 for encoder block n, depth + 1 for the rest."""
  names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
  if names and names[0] == "encoder":
    if len(names) > 2 and names[1] == "blocks":
      return int(names[2]) + 1
    if names[1] != "blocks":
      return 0
  return depth + 1


def scale_by_layer_decay(decay: float, depth: int) -> optax.GradientTransformation:
  """Multiplies each update by decay^(depth + 1 - layer_id): the lr of layer i, as BEiT and
  VideoMAE scale it (weight decay included, since it runs before this)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * decay ** (depth + 1 - layer_id(path, depth)), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build(optim_config: ml_collections.ConfigDict, total_steps: int, depth: int = 0):
  """AdamW for a model whose encoder has `depth` blocks (used by layer decay)."""
  o = optim_config
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  parts.append(optax.adamw(schedule(o, total_steps), b1=o.b1, b2=o.b2,
                           weight_decay=o.weight_decay, mask=decay_mask))
  if o.layer_decay < 1:
    parts.append(scale_by_layer_decay(o.layer_decay, depth))
  return optax.chain(*parts)
