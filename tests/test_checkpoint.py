import jax
import numpy as np
import pytest

from vidtx import builder, checkpoint, configuration, errors, models


def setup_for(width):
  c = configuration.base()
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", width, 1, 4
  c.model.patch_size = (2, 8, 8)
  c.data.num_frames = 4
  c.total_steps, c.optim.warmup_steps = 10, 1
  return builder.build(c)


def test_restore_in_a_fresh_manager_gives_back_the_saved_state(tmp_path):
  setup = setup_for(32)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
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
    state = builder.init_state(setup)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state, {"step": step})
  ckpt.wait()
  assert ckpt.manager.all_steps() == [2, 3]
  ckpt.close()


def test_restoring_into_another_shape_names_the_parameter(tmp_path):
  small = setup_for(32)
  with jax.set_mesh(small.mesh):
    state = builder.init_state(small)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, state, {"step": 1})
  ckpt.wait()
  with pytest.raises(ValueError, match=r"model/encoder/blocks/0/attn/proj has shape "
                                       r"\(4, 8, 32\) but the model expects \(4, 12, 48\)"):
    ckpt.restore(setup_for(48).abstract_state)
  ckpt.close()


def masked_setup(classifier, name="mae", seed=0):
  c = configuration.base()
  c.seed = seed
  c.model.name = name
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", 32, 2, 4
  if name == "mae":
    c.model.mae.update(classifier=classifier, decoder_width=16, decoder_depth=1, decoder_heads=2,
                       bridge_width=32, bridge_depth=1, bridge_heads=4)
  c.model.masking, c.model.mask_ratio = ("tube", 0.75) if name == "mae" else ("none", 0.0)
  c.model.patch_size = (2, 8, 8)
  c.data.num_frames = 4
  c.total_steps, c.optim.warmup_steps = 10, 1
  return builder.build(c)


def flat_params(state):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(
              checkpoint.nnx.to_pure_dict(state)["model"])[0]}


@pytest.mark.parametrize("target", ["bridge", "vit"])
def test_init_from_pretraining_moves_weights_by_name(tmp_path, target):
  """A VideoMAE pre-training run initialises MAR (encoder, norm, decoder, mask token) or a
  plain ViT (encoder); what the checkpoint lacks keeps its fresh init."""
  pre = masked_setup("none", seed=1)
  with jax.set_mesh(pre.mesh):
    pre_state = builder.init_state(pre)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "pre"), keep=1)
  ckpt.save(10, pre_state, {"step": 10})
  ckpt.close()

  fine = masked_setup("bridge") if target == "bridge" else masked_setup("", name="vit")
  with jax.set_mesh(fine.mesh):
    fresh = flat_params(builder.init_state(fine))
    loaded_state = checkpoint.init_from(builder.init_state(fine), str(tmp_path / "pre"),
                                        models.family(fine.config.model))
  loaded, source = flat_params(loaded_state), flat_params(pre_state)
  copied = {k for k in loaded if k in source}
  assert "encoder/blocks/1/attn/qkv" in copied and "encoder/patch_embed/kernel" in copied
  if target == "bridge":
    assert {"norm/scale", "mask_token", "decoder/head/kernel",
            "encoder_to_decoder/kernel"} <= copied
  for name in copied:
    np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
  # The copy replaced the fresh values: every parameter drawn at random (seed 0 here, 1 in the
  # checkpoint) changed; constants (zero biases, unit scales, the mask token) are the same in both.
  changed = {k for k in copied if not np.array_equal(loaded[k], fresh[k])}
  assert changed == {k for k in copied if np.unique(fresh[k]).size > 1}
  assert "encoder/blocks/1/attn/qkv" in changed
  fresh_only = set(loaded) - copied
  assert fresh_only and all(k.startswith(("classifier/", "head/", "norm/")) for k in fresh_only)
  for name in fresh_only:
    np.testing.assert_array_equal(loaded[name], fresh[name], err_msg=name)
  # The optimizer state is untouched: a fresh start from the new weights.
  for a, b in zip(jax.tree.leaves(loaded_state["optimizer"]),
                  jax.tree.leaves(builder.init_state(fine)["optimizer"])):
    np.testing.assert_array_equal(a, b)


def test_init_from_errors_name_the_path(tmp_path):
  with pytest.raises(errors.ConfigError, match="init_from=.*no checkpoint there"):
    checkpoint.init_from(None, str(tmp_path / "missing"), models.FAMILIES["vit"])
  other = setup_for(48)  # a ViT whose every parameter differs in shape from width 32's
  with jax.set_mesh(other.mesh):
    state = builder.init_state(other)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "other"), keep=1)
  ckpt.save(1, state, {"step": 1})
  ckpt.close()
  setup = masked_setup("bridge")
  with jax.set_mesh(setup.mesh), pytest.raises(ValueError, match="none of its parameters"):
    checkpoint.init_from(builder.init_state(setup), str(tmp_path / "other"),
                         models.family(setup.config.model))
