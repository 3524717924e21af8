"""The plain 3-D CNN (vidtx.models.cnn3d): its parameters, BatchNorm in training and evaluation,
the running statistics the real train step carries, the same steps on 8 simulated devices
under every parallelism, its config errors, and that it learns."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, configuration, errors, models, train
from vidtx.models import layers

import multidevice  # noqa: E402  (tests/multidevice.py)
from conftest import model_input, synthetic_batch, train_losses  # noqa: E402  (tests/models/conftest.py)



def tiny_config(**fields):
  """The "tiny" size (a 3x7x7 stem to 16 channels, stages of one block at 16, 32, 64) on
  4 frames of 32x32, 8 classes."""
  c = configuration.base()
  c.model.name, c.model.size = "cnn3d", "tiny"
  c.data.num_frames, c.data.crop_size, c.data.num_classes = 4, 32, 8
  c.batch_size = 4
  c.update_from_flattened_dict(fields)
  return c


def test_parameters_of_the_sizes():
  def count(config, kind):
    model = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
    return layers.count_params(nnx.state(model, kind))

  # Stem 3x7x7 kernel 3 -> 16 and BatchNorm scale + bias; 3x3x3 convs 16 -> 16, 16 -> 32,
  # 32 -> 64, each with its BatchNorm; the head 64 -> 8.
  tiny = (3 * 49 * 3 * 16 + 2 * 16 + 27 * 16 * 16 + 2 * 16 + 27 * 16 * 32 + 2 * 32
          + 27 * 32 * 64 + 2 * 64 + 64 * 8 + 8)
  assert tiny == 83_864
  assert count(tiny_config(), nnx.Param) == tiny
  # Running mean and variance of every BatchNorm.
  assert count(tiny_config(), nnx.BatchStat) == 2 * (16 + 16 + 32 + 64)
  # "small": stem to 32, two blocks per stage at 32, 64, 128, 256; 400 classes.
  small = 3 * 49 * 3 * 32 + 2 * 32
  for c_in, width in ((32, 32), (32, 64), (64, 128), (128, 256)):
    small += 27 * c_in * width + 2 * width + 27 * width * width + 2 * width
  small += 256 * 400 + 400
  assert small == 3_657_840
  assert count(tiny_config(**{"model.size": "small", "data.num_classes": 400}),
               nnx.Param) == small
  # The section overrides the size's stages.
  c = tiny_config(**{"model.cnn3d.stage_widths": (8,), "model.cnn3d.stage_blocks": (2,),
                     "model.cnn3d.stem_kernel": (1, 3, 3)})
  configuration.validate(c, num_devices=1, num_processes=1)
  assert count(c, nnx.Param) == 9 * 3 * 8 + 16 + 2 * (27 * 8 * 8 + 16) + 8 * 8 + 8


def test_batch_norm_uses_the_batch_in_training_and_the_running_averages_in_evaluation():
  c = tiny_config()
  model = models.build(c.model, c.data, nnx.Rngs(0))
  video = jnp.asarray(model_input(c, synthetic_batch(c, 4)["video"]))
  evaluate = nnx.jit(lambda model, video: model(video, train=False)[0])
  train_mode = nnx.jit(lambda model, video: model(video, train=True)[0])
  # Evaluation: a clip alone gives its logits within the batch, and nothing moves.
  logits = evaluate(model, video)
  assert logits.shape == (4, 8) and logits.dtype == jnp.float32
  np.testing.assert_allclose(evaluate(model, video[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(model.stem.norm.mean[...], np.zeros(16))
  np.testing.assert_array_equal(model.stem.norm.var[...], np.ones(16))
  # Training: the batch's statistics, so a clip's logits depend on the other clips; and every
  # BatchNorm's running averages move.
  alone = train_mode(model, video[1:2])
  stats = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  within = train_mode(model, video)[1:2]
  assert np.abs(np.asarray(alone) - np.asarray(within)).max() > 1e-3
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), stats,
                       nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  assert all(jax.tree.leaves(moved))
  # bfloat16 compute: float32 logits and statistics.
  low = models.build(tiny_config(**{"model.dtype": "bfloat16"}).model, c.data, nnx.Rngs(0))
  assert train_mode(low, video).dtype == jnp.float32
  assert low.stem.norm.mean[...].dtype == jnp.float32


def test_the_train_step_moves_the_running_averages_pytorch_s_way():
  """One real train step: the stem's running averages become 0.9 x (0, 1) + 0.1 x the batch's
  mean and unbiased variance of the stem convolution's output, computed here directly."""
  c = tiny_config(**{"optim.warmup_steps": 0})
  setup = builder.build(c)
  batch = synthetic_batch(c, 4)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    kernel = np.asarray(state["model"]["stem"]["conv"]["kernel"][...])
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(state["model"]))
    rng = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    state, _ = train.make_train_step(setup)(state, batch, rng,
                                            train.stop_flags(setup.mesh, False))
  conv = jax.lax.conv_general_dilated(model_input(c, batch["video"]), kernel, (1, 2, 2), [(1, 1), (3, 3), (3, 3)],
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                      precision="highest")
  values = np.asarray(conv, np.float64).reshape(-1, 16)
  norm = state["model"]["stem"]["norm"]
  np.testing.assert_allclose(norm["mean"][...], 0.1 * values.mean(axis=0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(norm["var"][...], 0.9 + 0.1 * values.var(axis=0, ddof=1),
                             rtol=1e-4)
  # The deeper ones moved too, and the parameters changed.
  after = nnx.to_pure_dict(state["model"])
  for name in ("mean", "var"):
    assert not np.array_equal(before["stages"][2]["blocks"][0]["norm"][name],
                              after["stages"][2]["blocks"][0]["norm"][name])
  assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])


def test_parallelism_presets_give_the_same_steps_with_kernels_sharded_as_the_rules_say(tmp_path):
  base = {"model.name": "cnn3d", "model.size": "tiny", "data.num_frames": 4, "batch_size": 16,
          "total_steps": 10, "optim.warmup_steps": 0}
  r = multidevice.train({
      "data": {**base, "mesh.parallelism": "data"}, "fsdp": {**base, "mesh.parallelism": "fsdp"},
      "tensor": {**base, "mesh.parallelism": "tensor"}, "mixed": {**base, "mesh.shape": (2, 2, 2)},
  }, tmp_path)
  # The kernel [3, 3, 3, in 16, out 32]: output channels over fsdp, input channels over
  # tensor. The stem's 3 input channels are never split.
  kernel = lambda name: r[name]["shardings"]["model/stages/1/blocks/0/conv/kernel"]
  spec = [None, None, None, "tensor", "fsdp"]
  assert kernel("data") == [spec, [3, 3, 3, 16, 32]]
  assert kernel("fsdp") == [spec, [3, 3, 3, 16, 4]]
  assert kernel("tensor") == [spec, [3, 3, 3, 2, 32]]
  assert kernel("mixed") == [spec, [3, 3, 3, 8, 16]]
  assert r["mixed"]["shardings"]["model/stem/conv/kernel"][0] == [None, None, None, None, "fsdp"]
  # The same two steps, parameters, running statistics (over the global batch) and optimizer
  # state whatever the placement, to the 1e-4: split input channels sum their partial
  # products in another order, which moved a kernel value of 0.04 by 1.7e-5 on one CI machine.
  for name in ("fsdp", "tensor", "mixed"):
    multidevice.assert_same_training(r[name], r["data"], name, atol=1e-4)


def test_masks_are_refused():
  c = tiny_config()
  model = models.build(c.model, c.data, nnx.Rngs(0))
  with pytest.raises(ValueError, match="cnn3d sees every pixel"):
    model(jnp.zeros((1, 4, 32, 32, 3)), keep=jnp.zeros((1, 2), int))


@pytest.mark.parametrize("fields, field, message", [
    ({"model.size": "B"}, "model.size",
     r"choose one of \['tiny', 'small'\] for model.name='cnn3d'"),
    ({"model.width": 64}, "model.width", "does not read it"),
    ({"model.patch_size": (2, 8, 8)}, "model.patch_size", "does not read it"),
    ({"model.masking": "tube", "model.mask_ratio": 0.5}, "model.masking", "sees every token"),
    ({"model.cnn3d.stage_widths": (16, 0, 64)}, "model.cnn3d.stage_widths",
     "positive ints, one per stage"),
    ({"model.cnn3d.stage_blocks": (1, 1)}, "model.cnn3d.stage_blocks",
     r"one entry per stage: the widths are \(16, 32, 64\) and the blocks per stage \(1, 1\)"),
    ({"model.cnn3d.stem_kernel": (7, 7)}, "model.cnn3d.stem_kernel", r"give \(t, h, w\)"),
    ({"model.cnn3d.stem_stride": (1, 0, 2)}, "model.cnn3d.stem_stride", "positive ints"),
    ({"model.head_dropout": 1.0}, "model.head_dropout", r"must be in \[0, 1\)"),
])
def test_config_errors_name_the_field(fields, field, message):
  c = tiny_config(**fields)
  with pytest.raises(errors.ConfigError, match=rf"config\.{field}=.*{message}"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_synthetic_config_learns():
  c = configuration.load(os.path.join(multidevice.ROOT, "configs", "cnn3d_synthetic.py"))
  configuration.validate(c, num_devices=1, num_processes=1)
  assert (c.model.name, c.data.name) == ("cnn3d", "synthetic_motion")
  losses = train_losses(c, steps=8)
  print(losses.round(3))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
