import jax
import numpy as np
import pytest

from vidtx import checkpoint, configuration, train


def setup_for(width):
  c = configuration.base()
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", width, 1, 4
  c.model.patch_size = (2, 8, 8)
  c.data.num_frames = 4
  c.total_steps, c.optim.warmup_steps = 10, 1
  return train.build(c)


def test_restore_in_a_fresh_manager_gives_back_the_saved_state(tmp_path):
  setup = setup_for(32)
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
  saver = checkpoint.Checkpointer(str(tmp_path), keep=2)
  saver.save(7, state, {"step": 7, "data_position": 7, "rng": [0, 1]})
  saver.wait()
  saver.close()

  reader = checkpoint.Checkpointer(str(tmp_path), keep=2)  # as after a restart
  assert reader.latest_step() == 7
  restored, meta = reader.restore(setup.abstract_state)
  assert meta == {"step": 7, "data_position": 7, "rng": [0, 1]}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(a, b)
    assert b.sharding == a.sharding


def test_keeps_only_the_last_n(tmp_path):
  setup = setup_for(32)
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state, {"step": step})
  ckpt.wait()
  assert ckpt.manager.all_steps() == [2, 3]
  ckpt.close()


def test_restoring_into_another_shape_names_the_parameter(tmp_path):
  small = setup_for(32)
  with jax.set_mesh(small.mesh):
    state = train.init_state(small)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, state, {"step": 1})
  ckpt.wait()
  with pytest.raises(ValueError, match=r"0/blocks/0/attn/proj has shape \(4, 8, 32\) but the "
                                       r"model expects \(4, 12, 48\)"):
    ckpt.restore(setup_for(48).abstract_state)
  ckpt.close()
