import jax
import numpy as np
import pytest

from vidtx.models import masking

GRID = (8, 14, 14)  # 16x224 clip, 2x16x16 tubelets: 1568 tokens


def visible_mask(indices, grid=GRID):
  mask = np.zeros(int(np.prod(grid)), bool)
  mask[np.asarray(indices)] = True
  return mask.reshape(grid)


def in_cell_position(grid=GRID):
  h, w = np.meshgrid(np.arange(grid[1]), np.arange(grid[2]), indexing="ij")
  return 2 * (h % 2) + w % 2


@pytest.mark.parametrize("name, ratio, kept", [
    ("none", 0.0, 1568), ("random", 0.9, 157), ("tube", 0.9, 8 * 20),
    ("cell_running", 0.5, 784), ("cell_running", 0.75, 392)])
def test_exact_visible_counts_sorted_and_unique(name, ratio, kept):
  idx = np.asarray(masking.SCHEDULES[name](jax.random.key(0), GRID, ratio))
  assert idx.shape == (kept,)
  assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 1568


def test_tube_masks_repeat_over_time():
  vis = visible_mask(masking.tube(jax.random.key(3), GRID, 0.9))
  assert vis[0].sum() == 20  # 196 - int(0.9 * 196)
  assert all(np.array_equal(vis[t], vis[0]) for t in range(8))


def test_random_and_tube_follow_the_key():
  for schedule in (masking.random, masking.tube):
    a, b = schedule(jax.random.key(0), GRID, 0.9), schedule(jax.random.key(1), GRID, 0.9)
    np.testing.assert_array_equal(a, schedule(jax.random.key(0), GRID, 0.9))
    assert not np.array_equal(a, b)


def test_cell_running_test_time_matches_the_spec():
  k = in_cell_position()
  # 50%: visible in-cell positions per slice are {2,3}, {3,0}, {0,1}, {1,2}, then repeat.
  vis = visible_mask(masking.cell_running(None, GRID, 0.5))
  expected = [{2, 3}, {3, 0}, {0, 1}, {1, 2}] * 2
  for t in range(8):
    assert set(np.unique(k[vis[t]])) == expected[t]
  # 75%: visible k = (t + 3) mod 4.
  vis75 = visible_mask(masking.cell_running(None, GRID, 0.75))
  for t in range(8):
    assert set(np.unique(k[vis75[t]])) == {(t + 3) % 4}


@pytest.mark.parametrize("ratio, times_seen", [(0.5, 2), (0.75, 1)])
def test_each_in_cell_position_seen_equally_every_four_slices(ratio, times_seen):
  vis = visible_mask(masking.cell_running(None, GRID, ratio))
  for start in (0, 4):
    # For every token position, how often it is visible in slices start..start+3.
    counts = vis[start:start + 4].sum(axis=0)
    assert np.all(counts == times_seen)


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_cell_running_train_time_properties(ratio):
  k = in_cell_position()
  masks = [visible_mask(masking.cell_running(jax.random.key(s), GRID, ratio)) for s in range(20)]
  for vis in masks:
    # Equal visible count per slice; in every cell exactly 4 - m positions are visible, and
    # every cell of a slice shows the same positions (one phase shared by all cells).
    assert np.all(vis.sum(axis=(1, 2)) == int(196 * (1 - ratio)))
    for t in range(8):
      shown = k[vis[t]]
      assert len(set(shown)) == int(4 * (1 - ratio))
      assert np.all(vis[t].reshape(7, 2, 7, 2).sum(axis=(1, 3)) == int(4 * (1 - ratio)))
  # Phase and temporal shuffle change with the key: the per-slice patterns differ across clips
  # and are not always the test-time rotation.
  patterns = {tuple(tuple(sorted(set(k[vis[t]]))) for t in range(8)) for vis in masks}
  assert len(patterns) > 5
  test = visible_mask(masking.cell_running(None, GRID, ratio))
  assert any(not np.array_equal(vis, test) for vis in masks)


def test_cell_running_rejects_odd_grids_and_other_ratios():
  with pytest.raises(ValueError, match="even token grid"):
    masking.cell_running(None, (8, 7, 7), 0.5)
  with pytest.raises(ValueError, match="0.25, 0.5 or 0.75"):
    masking.cell_running(None, GRID, 0.6)


def test_keep_indices_batches_independent_draws_and_jits():
  f = jax.jit(lambda key: masking.keep_indices("tube", key, 4, GRID, 0.9))
  idx = np.asarray(f(jax.random.key(0)))
  assert idx.shape == (4, 160)
  assert len({tuple(row) for row in idx}) == 4
  fixed = masking.keep_indices("cell_running", None, 3, GRID, 0.5)
  assert fixed.shape == (3, 784) and np.all(fixed == fixed[0])
  with pytest.raises(ValueError, match="needs a key"):
    masking.keep_indices("random", None, 2, GRID, 0.5)
  with pytest.raises(ValueError, match="choose one of"):
    masking.keep_indices("blocks", jax.random.key(0), 2, GRID, 0.5)
