"""Optimizer: AdamW with linear warm-up and cosine decay, weight decay on matrices only."""

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


def build(optim_config: ml_collections.ConfigDict, total_steps: int):
  o = optim_config
  adamw = optax.adamw(schedule(o, total_steps), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
  return adamw
