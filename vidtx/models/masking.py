"""Masking schedules: pure functions (key, grid, ratio) -> sorted indices of the visible tokens.

Tokens are numbered n = t * H' * W' + h * W' + w over the token grid (T', H', W'). Each schedule
keeps a fixed number of tokens, so shapes stay static under jit: encoders gather the kept tokens
and decoders scatter them back. Any ViT-family encoder can use any schedule, chosen by name.
"""

import math

import jax
import jax.numpy as jnp

Grid = tuple[int, int, int]


def token_grid(model_config, data_config) -> Grid:
  """(T', H', W') of the tubelet tokens for the configured clip and tubelet sizes."""
  pt, ph, pw = model_config.patch_size
  return (data_config.num_frames // pt, data_config.crop_size // ph, data_config.crop_size // pw)


def for_config(model_config, data_config, key, batch_size: int):
  """Visible-token indices [B, K] for `config.model.masking`, or None for all tokens.

  Training passes a key. Evaluation of a classifier passes None: cell running then uses its
  fixed test-time schedule (as MAR infers), and every other schedule sees all tokens.
  (Evaluation of a pre-training model passes a fixed key: it needs masked tokens.)
  """
  name = model_config.masking
  if name == "none" or (key is None and name not in FIXED_AT_TEST):
    return None
  grid = token_grid(model_config, data_config)
  return keep_indices(name, key, batch_size, grid, model_config.mask_ratio)


def num_masked(grid: Grid, ratio: float) -> int:
  """int(ratio * N), as VideoMAE and MAR count it."""
  return int(ratio * math.prod(grid))


def none(key, grid: Grid, ratio: float):
  """Every token visible."""
  del key, ratio
  return jnp.arange(math.prod(grid))


def random(key, grid: Grid, ratio: float):
  """A uniformly random subset of N - int(ratio * N) tokens."""
  n = math.prod(grid)
  return jnp.sort(jax.random.permutation(key, n)[:n - num_masked(grid, ratio)])


def tube(key, grid: Grid, ratio: float):
  """VideoMAE tube masking: one random spatial mask, the same in every time slice."""
  t, h, w = grid
  spatial = h * w
  visible = jnp.sort(jax.random.permutation(key, spatial)[:spatial - int(ratio * spatial)])
  return (jnp.arange(t)[:, None] * spatial + visible[None, :]).reshape(-1)


def cell_running(key, grid: Grid, ratio: float):
  """MAR cell running masking over 1x2x2 cells.

  The in-cell position is k = 2 (h mod 2) + (w mod 2); with m = 4 * ratio masked per cell, token
  (t, h, w) is masked iff (k - tau(t) - phi) mod 4 < m, so the visible positions run through the
  cell over time. With `key` (training): a random phase phi per clip and tau a random permutation
  of the slices. With key=None (evaluation): phi = 0 and tau(t) = t, so at 50% every in-cell
  position is seen twice every 4 slices, at 75% once.
  """
  t, h, w = grid
  if h % 2 or w % 2:
    raise ValueError(f"cell running masking needs an even token grid, got {h}x{w}")
  cells = t * (h // 2) * (w // 2)
  m = num_masked(grid, ratio) // cells
  if m * cells != num_masked(grid, ratio):
    raise ValueError(f"cell running masking needs a ratio of 0, 0.25, 0.5 or 0.75, got {ratio}")
  if key is None:
    phase, tau = 0, jnp.arange(t)
  else:
    phase_key, shuffle_key = jax.random.split(key)
    phase = jax.random.randint(phase_key, (), 0, 4)
    tau = jax.random.permutation(shuffle_key, t)
  hh, ww = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  k = 2 * (hh % 2) + ww % 2  # [H', W']
  masked = (k[None] - tau[:, None, None] - phase) % 4 < m  # [T', H', W']
  # Equal visible count in every slice, so the indices of the visible ones have a static size.
  visible_count = math.prod(grid) - num_masked(grid, ratio)
  return jnp.nonzero(~masked.reshape(-1), size=visible_count)[0]


SCHEDULES = {"none": none, "random": random, "tube": tube, "cell_running": cell_running}
# Schedules with a fixed test-time form (called with key=None); the others are random draws.
FIXED_AT_TEST = ("none", "cell_running")


def keep_indices(name: str, key, batch_size: int, grid: Grid, ratio: float):
  """[B, K] visible-token indices, an independent draw per clip (key=None: evaluation)."""
  if name not in SCHEDULES:
    raise ValueError(f"masking schedule {name!r} is unknown; choose one of {sorted(SCHEDULES)}")
  schedule = SCHEDULES[name]
  if key is None:
    if name not in FIXED_AT_TEST:
      raise ValueError(f"the {name!r} schedule is random: it needs a key")
    indices = schedule(None, grid, ratio)
    return jnp.broadcast_to(indices, (batch_size, indices.shape[0]))
  return jax.vmap(lambda k: schedule(k, grid, ratio))(jax.random.split(key, batch_size))
