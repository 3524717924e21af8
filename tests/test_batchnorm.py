"""config.model.bn: BatchNorm statistics over groups of clips, frozen BatchNorm, precise BN
(vidtx.precise_bn) alone and in a training run, and the checks of the section."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, configuration, data, errors, models, precise_bn, sharding, train
from vidtx.data import on_device
from vidtx.models import layers


def cnn3d_config(**fields):
  c = configuration.base()
  c.model.name, c.model.size = "cnn3d", "tiny"
  c.update_from_flattened_dict({"data.num_frames": 4, "data.crop_size": 32, "batch_size": 4,
                                "optim.warmup_steps": 0, **fields})
  return c


def train_forward(model, video):
  """Train-mode logits and the running statistics the forward pass leaves (a copy of model)."""
  model = nnx.clone(model)
  logits, _ = model(jnp.asarray(video), train=True)
  return np.asarray(logits), [(np.asarray(bn.mean[...]), np.asarray(bn.var[...]))
                              for bn in layers.batchnorms(model)]


def test_groups_of_clips_are_normalised_as_if_computed_apart():
  config = cnn3d_config(**{"model.bn.group_size": 2})
  model = models.build(config.model, config.data, nnx.Rngs(0))
  video = np.random.default_rng(0).normal(size=(6, 4, 32, 32, 3)).astype(np.float32)
  grouped, grouped_stats = train_forward(model, video)
  for bn in layers.batchnorms(model):
    bn.group_size = 0
  apart = [train_forward(model, video[i:i + 2]) for i in range(0, 6, 2)]
  np.testing.assert_allclose(grouped, np.concatenate([logits for logits, _ in apart]),
                             rtol=1e-4, atol=1e-5)
  # The running averages move towards the mean of the groups' statistics: the mean of the
  # three updates made apart (each is linear in the batch's statistics).
  for i, (mean, var) in enumerate(grouped_stats):
    np.testing.assert_allclose(mean, np.mean([stats[i][0] for _, stats in apart], 0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, np.mean([stats[i][1] for _, stats in apart], 0),
                               rtol=1e-5, atol=1e-6)
  # Over the whole batch they differ: the grouping is not a no-op.
  for bn in layers.batchnorms(model):
    bn.group_size = 0
  assert not np.allclose(train_forward(model, video)[0], grouped, atol=1e-3)


def test_frozen_batchnorm_trains_on_the_running_statistics_and_keeps_them():
  config = cnn3d_config(**{"model.bn.frozen": True})
  setup = builder.build(config)
  rng = np.random.default_rng(0)
  batch = {"video": rng.integers(0, 256, (4, 4, 32, 32, 3), np.uint8),
           "label": np.arange(4, dtype=np.int32)}
  key = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    before = jax.tree.map(np.array, state["model"])
    state, _ = train.make_train_step(setup)(state, batch, key,
                                            train.stop_flags(setup.mesh, False))
  leaves = lambda s, kind: jax.tree.leaves(nnx.state(s, kind))
  for a, b in zip(leaves(before, nnx.BatchStat), leaves(state["model"], nnx.BatchStat)):
    np.testing.assert_array_equal(a, b)
  # Scales and biases still train.
  assert any(not np.array_equal(a, b) for a, b in
             zip(leaves(before, nnx.Param), leaves(state["model"], nnx.Param)))
  # Its training forward pass is the evaluation's.
  model = nnx.merge(setup.graphdef, state)["model"]
  video = on_device.eval_clips(config.data, batch["video"])
  np.testing.assert_allclose(model(video, train=True)[0], model(video, train=False)[0],
                             rtol=1e-5, atol=1e-6)


def test_precise_bn_gives_the_population_statistics_of_the_training_batches():
  """The first BatchNorm's input is the stem conv's output, whatever the other layers do: its
  recomputed statistics are the mean and variance of that output over all the batches."""
  config = cnn3d_config(**{"model.bn.precise_batches": 3})
  setup = builder.build(config)
  rng = np.random.default_rng(1)
  # Batches of different brightness, so the batch means differ and their spread counts.
  batches = [{"video": rng.integers(40 * i, 40 * i + 120, (4, 4, 32, 32, 3), np.uint8),
              "label": np.zeros(4, np.int32)} for i in range(3)]
  key = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    conv = nnx.merge(setup.graphdef, state)["model"].stem.conv
    inputs = np.concatenate([np.asarray(conv(on_device.eval_clips(config.data, b["video"])))
                             for b in batches]).reshape(-1, 16)
    device_batches = iter([sharding.to_global(b, setup.batch_sharding) for b in batches])
    state = precise_bn.PreciseBatchNorm(setup)(state, device_batches, 3, key, 7)
  model = nnx.merge(setup.graphdef, state)["model"]
  np.testing.assert_allclose(model.stem.norm.mean[...], inputs.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.stem.norm.var[...], inputs.var(0), rtol=1e-4, atol=1e-5)
  # The average of the batch variances alone would be smaller by the batch means' spread.
  within = np.mean([inputs[i * 4096:(i + 1) * 4096].var(0) for i in range(3)], 0)
  assert (inputs.var(0) - within).mean() > 0.01
  # Every layer's statistics were replaced.
  assert all(not np.allclose(bn.var[...], 1.0) for bn in layers.batchnorms(model))


def test_a_run_with_precise_bn_saves_the_statistics_of_the_batches_after_its_last_step(
    tmp_path):
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
  config = cnn3d_config(**{
      "model.bn.precise_batches": 2, "total_steps": 2, "eval_every_steps": 0,
      "data.data_dir": data_dir, "data.synthetic.num_train": 16, "data.synthetic.num_val": 8,
      "data.synthetic.num_shards": 2})
  train.train_and_evaluate(config, workdir)
  model, step = builder.restore_model(config, workdir)
  assert step == 2
  # The two training batches after step 2, as the host pipeline makes them (no augmentation
  # on the device in this config: only normalising).
  batches = data.build(config.data, "train", train=True, batch_size=4, seed=config.seed,
                       start_batch=2, data_dir=data_dir)
  videos = [next(batches)["video"] for _ in range(2)]
  batches.close()
  inputs = np.concatenate([np.asarray(model.stem.conv(on_device.eval_clips(config.data, v)))
                           for v in videos]).reshape(-1, 16)
  np.testing.assert_allclose(model.stem.norm.mean[...], inputs.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.stem.norm.var[...], inputs.var(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("model.bn.momentum", 0.0, "must be in (0, 1]"),
    ("model.bn.eps", -1e-5, "must be > 0"),
    ("model.bn.group_size", 3, "divides the batch of each forward pass, 4"),
    ("model.bn.precise_batches", -1, "0 for off"),
])
def test_bad_batchnorm_settings_name_the_field(field, value, message):
  config = cnn3d_config(**{field: value})
  with pytest.raises(errors.ConfigError, match=field.replace(".", r"\.")) as e:
    configuration.validate(config, num_devices=1, num_processes=1)
  assert message in str(e.value)


def test_frozen_statistics_cannot_be_recomputed():
  config = cnn3d_config(**{"model.bn.frozen": True, "model.bn.precise_batches": 10})
  with pytest.raises(errors.ConfigError, match="frozen BatchNorm keeps its statistics"):
    configuration.validate(config, num_devices=1, num_processes=1)


def test_a_model_without_batchnorm_refuses_the_settings():
  config = configuration.base()
  config.model.bn.group_size = 8
  with pytest.raises(errors.ConfigError, match=r"model.bn.group_size=8: model.name='vit' has "
                     "no BatchNorm layers"):
    builder.build(config)


def test_momentum_and_eps_replace_the_familys_own():
  config = cnn3d_config(**{"model.bn.momentum": 0.01, "model.bn.eps": 1e-3})
  model = models.build(config.model, config.data, nnx.Rngs(0))
  assert {(bn.momentum, bn.eps) for bn in layers.batchnorms(model)} == {(0.01, 1e-3)}
  default = cnn3d_config()
  model = models.build(default.model, default.data, nnx.Rngs(0))
  assert {(bn.momentum, bn.eps) for bn in layers.batchnorms(model)} == {(0.1, 1e-5)}


@pytest.mark.parametrize("groups, shape", [(1, (4, 3, 5, 5, 8)), (2, (4, 3, 5, 5, 8)),
                                           (3, (3, 2, 4, 6))])
def test_batchnorms_written_out_gradient_is_autodiffs(groups, shape):
  """layers.batch_norm_train against autodiff of the textbook formula: outputs, statistics and
  the gradients of x, scale and bias through a ReLU and a random readout."""
  rng = np.random.default_rng(groups)
  x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
  scale = jnp.asarray(rng.normal(1.0, 0.5, shape[-1]), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.5, shape[-1]), jnp.float32)
  readout = jnp.asarray(rng.normal(size=shape), jnp.float32)
  g_shape = (groups, shape[0] // groups, *shape[1:])

  def textbook(x, scale, bias):
    g = x.reshape(g_shape)
    axes = tuple(range(1, g.ndim - 1))
    mean = g.mean(axes, keepdims=True)
    var = g.var(axes, keepdims=True)
    return ((g - mean) / jnp.sqrt(var + 1e-5) * scale + bias).reshape(shape), mean, var

  def written_out(x, scale, bias):
    y, mean, var = layers.batch_norm_train(x.reshape(g_shape), scale, bias, 1e-5)
    return y.reshape(shape), mean, var

  def loss(norm):
    return lambda x, scale, bias: jnp.sum(jax.nn.relu(norm(x, scale, bias)[0]) * readout)

  for ours, reference in zip(written_out(x, scale, bias), textbook(x, scale, bias)):
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
  grads = jax.grad(loss(written_out), argnums=(0, 1, 2))(x, scale, bias)
  expected = jax.grad(loss(textbook), argnums=(0, 1, 2))(x, scale, bias)
  for name, ours, reference in zip(("x", "scale", "bias"), grads, expected):
    assert np.abs(reference).max() > 0.1, name  # the check compares something
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4, err_msg=name)
