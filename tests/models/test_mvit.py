"""MViT / MViTv2 (vidtx.models.mvit) beyond the contract test and tests/parity/test_mvit_parity.py
(torchvision parity, PySlowFast checkpoints): block layouts of the references, pooling,
precision and remat, init_from at another clip size, attention rollout's refusal, config errors,
and learning on the synthetic data."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, checkpoint, configuration, errors, models
from vidtx.models import layers, masking, mvit
from vidtx.tools import visualize_attention, visualize_masks

from conftest import train_losses  # noqa: E402  (tests/models/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(version=2, frames=4, crop=32, **fields):
  """Width 32, 3 blocks, stages from blocks 1 and 2, keys and values pooled 1x4x4 first."""
  c = configuration.base()
  c.model.name, c.model.size = "mvit", "v1_b" if version == 1 else "v2_s"
  c.model.patch_size = (2, 4, 4)
  c.update_from_flattened_dict({
      "model.width": 32, "model.depth": 3, "model.num_heads": 1, "model.mvit.stages": (1, 2),
      "model.mvit.kv_stride": (1, 4, 4), "data.num_frames": frames, "data.crop_size": crop,
      "data.min_resize": max(36, crop), "data.num_classes": 5, "batch_size": 4, **fields})
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def build(config, seed=0):
  return models.build(config.model, config.data, nnx.Rngs(seed))


def clip(config, batch=2, seed=0):
  d = config.data
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (batch, d.num_frames, d.crop_size, d.crop_size, 3)).astype(np.float32))


def logits_of(model, video):
  return np.asarray(nnx.jit(lambda m, v: m(v)[0])(model, video))


def test_block_layouts_are_torchvisions():
  """mvit_v1_b's and mvit_v2_s's block lists (torchvision/models/video/mvit.py), written out."""
  tv_heads = [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8]
  v1_in = [96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768, 768]
  v1_out = [192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768, 768, 768]
  v2_in = [96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768]
  v2_out = [96, 192, 192, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 384, 768, 768]
  kv = [(1, 8, 8)] + [(1, 4, 4)] * 2 + [(1, 2, 2)] * 11 + [(1, 1, 1)] * 2
  q_strided = {1, 3, 14}
  for version, dims_in, dims_out in ((1, v1_in, v1_out), (2, v2_in, v2_out)):
    settings = mvit.block_settings(version, 96, 16, 1, (1, 3, 14), q_stride=(1, 2, 2),
                                   kv_stride=(1, 8, 8), pool_kernel=(3, 3, 3))
    assert [s[0] for s in settings] == dims_in and [s[1] for s in settings] == dims_out
    assert [s[2] for s in settings] == tv_heads
    assert [s[6] for s in settings] == kv and all(s[5] == (3, 3, 3) for s in settings)
    assert [s[4] for s in settings] == [(1, 2, 2) if i in q_strided else (1, 1, 1)
                                        for i in range(16)]
    # v1 pools queries only where they stride; v2 everywhere (kernel 3, stride 1).
    assert [s[3] for s in settings] == [
        (3, 3, 3) if version == 2 or i in q_strided else (1, 1, 1) for i in range(16)]


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_max_and_avg_pooling_are_pytorchs(mode):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((2, 5, 9, 9, 4)).astype(np.float32)
  kernel, stride = (3, 3, 3), (1, 2, 2)
  pool = (torch.nn.MaxPool3d if mode == "max" else torch.nn.AvgPool3d)(kernel, stride, (1, 1, 1))
  expected = pool(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy().transpose(0, 2, 3, 4, 1)
  ours = np.asarray(mvit.pool_window(jnp.asarray(x), kernel, stride, mode))
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


# (kernel, stride, padding, input [T, H, W]): strided, uneven, padded beyond what any output
# reads (its last positions get no gradient) and unpadded.
DEPTHWISE_CASES = [((3, 3, 3), (1, 2, 2), (1, 1, 1), (5, 9, 9)),
                   ((3, 3, 3), (2, 2, 2), (1, 1, 1), (6, 8, 7)),
                   ((1, 3, 3), (1, 2, 2), (0, 1, 1), (4, 10, 10)),
                   ((3, 1, 1), (1, 1, 1), (2, 0, 0), (4, 5, 5)),
                   ((2, 3, 3), (2, 3, 3), (0, 0, 0), (5, 8, 8))]


@pytest.mark.parametrize("kernel_size, stride, padding, size", DEPTHWISE_CASES)
def test_depthwise_convolution_on_cpu_is_the_grouped_convolution(kernel_size, stride, padding,
                                                                 size):
  """layers.depthwise_conv3d's CPU form (a sum of strided, shifted slices, its gradients
  written out) against XLA's grouped convolution, which other backends run: outputs and both
  gradients."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, *size, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((*kernel_size, 1, 6)), jnp.float32)

  def grouped(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, stride, [(p, p) for p in padding],
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                        feature_group_count=6)

  ours = lambda x, kernel: layers.depthwise_conv3d(x, kernel, stride, padding)
  expected = grouped(x, kernel)
  np.testing.assert_allclose(ours(x, kernel), expected, rtol=1e-5, atol=1e-5)
  readout = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  loss = lambda conv: lambda x, kernel: jnp.sum(conv(x, kernel) * readout)
  for name, got, want in zip(("input", "kernel"), jax.grad(loss(ours), (0, 1))(x, kernel),
                             jax.grad(loss(grouped), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_parameter_free_pooling_models_run(mode):
  """PySlowFast's MODE max/avg: no pooling convolutions or norms, the same grids."""
  config = tiny_config(**{"model.mvit.pool": mode})
  model = build(config)
  names = nnx.to_pure_dict(nnx.state(model, nnx.Param))["blocks"][1]["attn"]
  assert not any(k.startswith("pool_") for k in names)
  assert [b.out_grid for b in model.blocks] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
  logits = logits_of(model, clip(config))
  assert logits.shape == (2, 5) and np.isfinite(logits).all()


@pytest.mark.parametrize("version", [1, 2])
def test_bfloat16_compute_stays_near_float32(version):
  """model.dtype=bfloat16 computes in bfloat16 from the same float32 parameters."""
  config = tiny_config(version)
  f32 = build(config)
  config.model.dtype = "bfloat16"
  bf16 = build(config)
  nnx.update(bf16, nnx.state(f32, nnx.Param))
  video = clip(config)
  expected, got = logits_of(f32, video), logits_of(bf16, video)
  assert got.dtype == np.float32 and np.all(
      jax.tree.leaves(jax.tree.map(lambda x: x.dtype == jnp.float32,
                                   nnx.state(bf16, nnx.Param))))
  np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
  assert np.abs(got - expected).max() > 0  # it did compute in bfloat16


def test_remat_gives_the_same_gradients():
  config = tiny_config(**{"model.drop_path": 0.2, "model.depth": 2, "model.mvit.stages": (1,)})
  video, key = clip(config), jax.random.key(1)

  def grads(remat):
    config.model.remat = remat
    model = build(config)
    loss = lambda m: (m(video, train=True, key=key)[0] ** 2).mean()
    return nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param)

  none, full = grads("none"), grads("full")
  for a, b in zip(jax.tree.leaves(none), jax.tree.leaves(full), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_wrong_clip_size_and_masks_are_refused():
  config = tiny_config()
  model = build(config)
  with pytest.raises(ValueError, match=r"gives a \(4, 8, 8\) token grid; this model was built "
                                       r"for \(2, 8, 8\)"):
    model(jnp.zeros((1, 8, 32, 32, 3)))
  with pytest.raises(ValueError, match="mvit sees every token"):
    model(clip(config), keep=jnp.zeros((2, 4), jnp.int32))


def saved_params(tmp_path, config, seed=0):
  """The parameters of a random model of `config`, written for init_from."""
  params = nnx.to_pure_dict(nnx.state(build(config, seed), nnx.Param))
  checkpoint.save_params(str(tmp_path / "source"), params)
  return jax.tree.map(np.asarray, params)


def initialised(tmp_path, config):
  setup = builder.build(config)
  with jax.set_mesh(setup.mesh):
    state = checkpoint.init_from(builder.init_state(setup), str(tmp_path / "source"),
                                 models.family(config.model),
                                 masking.token_grid(config.model, config.data),
                                 config.init_from_inflation)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(
      nnx.merge(setup.graphdef, state)["model"], nnx.Param)))


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def test_init_from_16_to_32_frames_resizes_the_v1_position_tables(tmp_path):
  """A 4-frame 32^2 checkpoint (2x8x8 tokens) fine-tuned at 8 frames of 48^2 (4x12x12), by
  the ViT's rules (vidtx.weights.inflate): the frame table is resized over time (nearest: each
  row twice), the spatial table bicubically over space; the rest is copied."""
  old = saved_params(tmp_path, tiny_config(1))
  new = initialised(tmp_path, tiny_config(1, frames=8, crop=48))
  np.testing.assert_array_equal(new["time_embed"]["embedding"],
                                np.repeat(old["time_embed"]["embedding"], 2, axis=0))
  spatial = old["pos_embed"]["embedding"]
  resized = np.asarray(jax.image.resize(spatial.reshape(8, 8, 32), (12, 12, 32), "bicubic"))
  np.testing.assert_allclose(new["pos_embed"]["embedding"], resized.reshape(144, 32),
                             rtol=1e-6, atol=1e-6)
  same = {k: v for k, v in flat(old).items() if not k.startswith(("pos_embed/", "time_embed/"))}
  got = flat(new)
  assert len(same) == len(got) - 2
  for k, v in same.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_init_from_resizes_v2_relative_tables_linearly(tmp_path):
  """MViTv2 at 8 frames of 48^2 from 4 of 32^2: each relative table is torch's linear
  interpolation of the checkpoint's (rel_pos_t 3 -> 7 rows, rel_pos_h 15 -> 23, ...)."""
  torch = pytest.importorskip("torch")
  old = saved_params(tmp_path, tiny_config(2))
  new = initialised(tmp_path, tiny_config(2, frames=8, crop=48))
  resized = 0
  for k, v in flat(old).items():
    got = flat(new)[k]
    if got.shape != v.shape:
      assert k.rsplit("/", 1)[1] in ("rel_pos_t", "rel_pos_h", "rel_pos_w"), k
      expected = torch.nn.functional.interpolate(
          torch.from_numpy(np.array(v)).T[None], size=got.shape[0], mode="linear")[0].T.numpy()
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=k)
      resized += 1
    else:
      np.testing.assert_array_equal(got, v, err_msg=k)
  assert resized == 9  # t, h and w of the 3 blocks


def test_attention_rollout_stops_with_a_clear_message():
  """Pooled keys map the N_q tokens onto fewer N_k: no token-to-token rollout."""
  with pytest.raises(visualize_masks.VisualizeError,
                     match=r"model.name='mvit' has no attention rollout: it needs every "
                           r"attention step over the clip's tokens, which pooling attention"):
    visualize_attention.check_supported(tiny_config())


@pytest.mark.parametrize("fields, field, message", [
    ({"model.mvit.pool": "mean"}, "model.mvit.pool", "choose one of"),
    ({"model.mvit.pos_embed": "sincos"}, "model.mvit.pos_embed", "choose one of"),
    ({"model.mvit.stages": (2, 1)}, "model.mvit.stages", r"increasing block indices in \[1, 3\)"),
    ({"model.mvit.stages": (1, 3)}, "model.mvit.stages", r"increasing block indices"),
    ({"model.mvit.patch_padding": (1, 1, 1)}, "model.mvit.patch_padding",
     r"makes a \(2, 7, 7\) token grid"),
    ({"model.mvit.q_stride": (1, 2)}, "model.mvit.q_stride", r"give \(t, h, w\)"),
    ({"model.width": 30, "model.num_heads": 4}, "model.width", "divisible by model.num_heads=4"),
    ({"model.attention": "divided"}, "model.attention", "does not read it"),
])
def test_config_errors_name_the_field(fields, field, message):
  with pytest.raises(errors.ConfigError, match=rf"config\.{field}=.*{message}"):
    tiny_config(**fields)


def test_cpu_config_learns_the_synthetic_motion():
  c = configuration.load(f"{ROOT}/configs/mvit_k400.py:cpu")
  losses = train_losses(c, steps=8)
  print(losses.round(3))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
