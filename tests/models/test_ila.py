"""ILA (vidtx.models.ila): the alignment mask, loss and per-frame assembly against their
formulas, the model at init against plain CLIP, and training through the real train step."""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, configuration, errors, models, train
from vidtx.models import ila, layers
from conftest import model_input, synthetic_batch  # noqa: E402  (tests/models/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**model):
  """A 2-block, width-32 ILA on 4 frames of 32x32 (4x4 patches of 8x8 per frame), with 32
  interaction channels."""
  c = configuration.base()
  c.model.name, c.model.attention, c.model.size = "ila", "space_only", "Ti"
  c.model.width, c.model.depth, c.model.num_heads = 32, 2, 4
  c.model.patch_size, c.model.ila.proj_dim, c.model.ila.channels = (1, 8, 8), 16, 32
  c.model.update(model)
  c.data.num_frames, c.data.crop_size, c.data.num_classes = 4, 32, 8
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def test_alignment_mask_follows_the_formula():
  # Grid coordinates -1, -0.5, 0, 0.5, 1; the point (x, y) = (0.1, -0.4).
  mask = np.asarray(ila.alignment_mask(jnp.array([0.1, -0.4]), (5, 5)))
  # Distances g - p: x -1.1, -0.6, -0.1, 0.4, 0.9; y -0.6, -0.1, 0.4, 0.9, 1.4. Within 0.25 the
  # weight is 1; beyond, 1 - 1.5 (|d| - 0.25), at least 0.
  wx = np.array([0.0, 1 - 1.5 * 0.35, 1.0, 1 - 1.5 * 0.15, 1 - 1.5 * 0.65])
  wy = np.array([1 - 1.5 * 0.35, 1.0, 1 - 1.5 * 0.15, 1 - 1.5 * 0.65, 0.0])
  np.testing.assert_allclose(mask, wy[:, None] * wx[None, :], atol=1e-6)
  assert mask[1, 2] == 1.0  # flat top: rows are y, columns x
  assert mask[0, 3] == pytest.approx(0.475 * 0.775)
  assert (mask[4] == 0).all() and (mask[:, 0] == 0).all()
  # The profile: flat to 0.25, slope 1.5, zero from 0.25 + 1 / 1.5.
  d = jnp.array([0.0, 0.25, -0.25, 0.35, -0.45, 0.25 + 1 / 1.5, 2.0])
  np.testing.assert_allclose(ila.axis_weight(d), [1, 1, 1, 0.85, 0.7, 0, 0], atol=1e-6)
  # Non-square grids: rows follow y, columns x.
  corner = np.asarray(ila.alignment_mask(jnp.array([1.0, -1.0]), (3, 5)))
  assert corner.shape == (3, 5) and corner[0, 4] == 1.0 and corner[2, 0] == 0.0
  # Training: the mean over the 9 jittered points.
  point, delta = jnp.array([0.3, -0.2]), 0.2
  by_hand = np.mean([ila.alignment_mask(point + delta * jnp.array(o, jnp.float32), (7, 7))
                     for o in ila.JITTER], axis=0)
  np.testing.assert_allclose(ila.jittered_mask(point, (7, 7), delta), by_hand, atol=1e-6)
  np.testing.assert_allclose(ila.jittered_mask(point, (7, 7), 0.0),
                             ila.alignment_mask(point, (7, 7)), atol=1e-6)


def test_cosine_loss():
  a = jnp.array([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  b = jnp.array([[2.0, 4.0, 6.0], [0.0, 5.0, 0.0], [1.0, math.sqrt(3), 0.0], [-3.0, 0.0, 0.0]])
  np.testing.assert_allclose(ila.cosine_loss(a, b), [0.0, 1.0, 0.5, 2.0], atol=1e-6)


def test_per_frame_averages_the_two_pairs_of_middle_frames():
  # 3 pairs of 4 frames; pair i's first side holds 10 i + 1, its second 10 i + 2.
  first = jnp.array([[1.0, 11.0, 21.0]])[..., None]
  second = jnp.array([[2.0, 12.0, 22.0]])[..., None]
  np.testing.assert_allclose(ila.per_frame(first, second)[0, :, 0],
                             [1.0, (11 + 2) / 2, (21 + 12) / 2, 22.0])


def test_batch_norm_uses_the_batch_in_training_and_running_averages_in_evaluation():
  norm = ila.ConvNorm(3, 2, 1, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 3)) * 3.0 + 1.0
  y = norm.conv(x)
  trained = norm(x, train=True)  # ReLU of the batch-normalised conv
  normalised = (y - y.mean((0, 1, 2))) / jnp.sqrt(y.var((0, 1, 2)) + ila.NORM_EPS)
  np.testing.assert_allclose(trained, jax.nn.relu(normalised), atol=1e-5)
  # Running averages move a tenth of the way (PyTorch's momentum 0.1) from (0, 1).
  np.testing.assert_allclose(norm.norm.mean[...], 0.1 * y.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(norm.norm.var[...], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-5)
  evaluated = norm(x, train=False)
  expected = (y - norm.norm.mean[...]) / jnp.sqrt(norm.norm.var[...] + ila.NORM_EPS)
  np.testing.assert_allclose(evaluated, jax.nn.relu(expected), atol=1e-5)


def test_ila_b16_parameter_count():
  c = configuration.load(os.path.join(ROOT, "configs", "ila_k400.py"))
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  # One ILA module of the reference for D = 768 (K400's separable interaction), layer by layer:
  d = 768
  per_block = (
      d * d + d + 2 * d  # message_fc, message_ln
      + (2 * d * 9 + 2 * d + 2 * 2 * d)  # depthwise 3x3 + BN
      + (2 * d * 256 + 256 + 2 * 256)  # pointwise 1x1 + BN
      + (256 * 256 * 9 + 256 + 2 * 256)  # 3x3 + BN
      + (256 * 128 * 9 + 128 + 2 * 128) + (128 * 128 * 9 + 128 + 2 * 128)  # point convs + BN
      + (64 * 64 + 64) + (32 * 4 + 4)  # grouped Conv1d 128 -> 64 -> 4
      + (128 * 128 * 3 + 128) + (128 * d + d)  # Conv3d (3, 1, 1), fc 128 -> D
      + 2 * (d * d + d))  # temporal_skip_align_fc, temporal_skip_fc
  assert per_block == 3_372_100
  assert layers.count_params(params["ila"]) == 12 * per_block
  # CLIP ViT-B/16's visual tower (OpenAI's 86.2M, projection to 512 included).
  assert layers.count_params(params["clip"]) == 86_192_640
  mit = 4 * 512 * 512 + 2 * 512 * 2048 + 3 * 512 + 512 + 2048 + 512 + 4 * 512 + 8 * 512
  assert layers.count_params(params["mit"]) == mit
  assert layers.count_params(params) == 86_192_640 + 12 * per_block + mit + 2 * 512 + 513 * 400


@pytest.fixture(scope="module")
def synthetic_run():
  """The synthetic config at test size (2 blocks, width 32, 4 frames, 32 interaction channels,
  the MIT head), CLIP frozen, 2 accumulated micro-batches: its train Setup, initial state and a
  batch of synthetic-motion clips of every class."""
  c = configuration.load(os.path.join(ROOT, "configs", "ila_k400.py") + ":cpu")
  c.unlock()
  c.model.width, c.model.depth, c.model.num_heads, c.model.ila.proj_dim = 32, 2, 4, 16
  c.model.ila.channels, c.data.num_frames = 32, 4
  c.batch_size, c.grad_accum_steps, c.optim.warmup_steps = 8, 2, 1
  c.model.head_dropout = 0.0  # so that 6 steps on one batch lower its loss whatever the keys
  c.optim.frozen = ("^clip/",)
  setup = builder.build(c)
  batch = synthetic_batch(c, c.batch_size)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
  return setup, state, batch


def test_at_init_ila_is_clip_and_points_are_centred(synthetic_run):
  setup, state, batch = synthetic_run
  z = jax.random.normal(jax.random.key(2), (6, 4, 4, setup.config.model.ila.channels))

  @jax.jit
  def run(state, video, z):
    model = nnx.merge(setup.graphdef, state, copy=True)["model"]
    features, loss = model.frame_features(video, train=True, key=jax.random.key(1))
    clip_features = model.clip(video)["features"]
    points = [model.ila[0].point_head(z, mode) for mode in (True, False)]
    # The injection is all that holds ILA back: with a non-zero W_a the features move.
    skip = model.ila[0].align_skip.kernel
    skip[...] = jax.random.normal(jax.random.key(3), skip.shape) * 0.1
    moved, _ = model.frame_features(video)
    return features, loss, clip_features, points, moved

  with jax.set_mesh(setup.mesh):
    features, loss, clip_features, points, moved = run(
        state, model_input(setup.config, batch["video"]), z)
  np.testing.assert_allclose(features, clip_features, atol=1e-5, rtol=1e-5)
  assert features.shape == (8, 4, 16) and loss.shape == (8,)
  assert np.isfinite(loss).all() and (loss > 0).all()
  # The point head's zero last layer puts both points of every pair at the centre.
  for p in points:
    np.testing.assert_array_equal(p, np.zeros((6, 4)))
  assert np.abs(np.asarray(moved) - np.asarray(clip_features)).max() > 1e-3


def test_training_updates_ila_and_batch_statistics_but_not_frozen_clip(synthetic_run):
  """Real train steps of the synthetic config (the accumulating step)."""
  setup, state, batch = synthetic_run
  initial = jax.tree.map(np.asarray, nnx.to_pure_dict(state["model"]))
  with jax.set_mesh(setup.mesh):
    state = jax.tree.map(jnp.copy, state)  # the step donates its state
    step = train.make_train_step(setup)
    rng = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    losses = []
    for _ in range(6):
      state, metrics = step(state, batch, rng, train.stop_flags(setup.mesh, False))
      losses.append(float(metrics["loss"]))
  trained = jax.tree.map(np.asarray, nnx.to_pure_dict(state["model"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert float(metrics["align_loss"]) > 0
  flat = lambda tree: {jax.tree_util.keystr(p, simple=True, separator="/"): x
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  before, after = flat(initial), flat(trained)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert not {k for k in changed if k.startswith("clip/")}
  # Every ILA parameter moved (W_a, W_i zero at first pass the gradient on after a step), and
  # BatchNorm's running statistics are carried out of the train step. Not the biases of the
  # convs before a BatchNorm: it subtracts them again, so their gradient is 0 (as in PyTorch).
  before_norm = re.compile(r"(interaction/\d+|point_head/conv\d)/conv/bias$")
  ila_names = {k for k in before if k.startswith("ila/") and not before_norm.search(k)}
  assert ila_names - changed == set()
  assert {"ila/0/point_head/conv1/norm/mean", "ila/1/interaction/0/norm/var"} <= changed
  assert {"head/kernel", "mit/pos_embed/embedding"} <= changed


@pytest.mark.parametrize("field, value, message", [
    ("model.patch_size", (2, 8, 8), "use \\(1, p, p\\)"),
    ("data.crop_size", 24, "at least 4 x 8 pixels"),
    ("data.num_frames", 1, "at least 2"),
    ("model.ila.interaction", "depthwise", "choose one of \\('separable', 'dense'\\)"),
    ("model.ila.head", "text", "choose one of \\('mean', 'mit'\\)"),
    ("model.ila.channels", 100, "multiple of 8"),
    ("model.attention", "joint", "takes one of \\('space_only',\\)"),
])
def test_bad_fields_are_named(field, value, message):
  c = tiny_config()
  c.update_from_flattened_dict({field: value})
  with pytest.raises(errors.ConfigError, match=f"config.{field}=.*{message}"):
    configuration.validate(c, num_devices=1, num_processes=1)
