"""The swappable space-time attention of `layers.Block`: which tokens each token sees, the
token layouts, the temporal steps, and remat."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, models
from vidtx.models import layers

T, S, D, HEADS = 3, 4, 16, 4  # 3 frames of 4 positions


def dependence(attend, layout, num_tokens):
  """[N, N] booleans: output token i depends on input token j, read off the Jacobian of an
  attention with `attend` at a random input (nonzero wherever a path exists)."""
  attention = layers.Attention(D, HEADS, k_bias=True, attend=attend, layout=layout,
                               rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, num_tokens, D))
  graphdef, state = nnx.split(attention)
  jacobian = jax.jit(jax.jacfwd(lambda x: nnx.merge(graphdef, state)(x)[0]))(x)[:, :, 0]  # [N,D,N,D]
  return np.abs(np.asarray(jacobian)).sum(axis=(1, 3)) > 0


def expected(rule, space_major=False, cls=False):
  """Token n's frame and position under the layout, then `rule(t_i, s_i, t_j, s_j)`."""
  n = np.arange(T * S)
  t, s = (n % T, n // T) if space_major else (n // S, n % S)
  grid = rule(t[:, None], s[:, None], t[None], s[None])
  if cls:  # CLS sees everything and every token sees CLS
    grid = np.pad(grid, ((1, 0), (1, 0)), constant_values=True)
  return grid


@pytest.mark.parametrize("space_major", [False, True])
def test_each_rule_sees_exactly_its_tokens(space_major):
  layout = layers.TokenLayout(frames=T, space_major=space_major)
  rules = {
      layers.attend_all: lambda ti, si, tj, sj: np.ones_like(ti == tj),
      layers.attend_within_frames: lambda ti, si, tj, sj: ti == tj,
      layers.attend_within_positions: lambda ti, si, tj, sj: si == sj,
      layers.attend_split_heads: lambda ti, si, tj, sj: (ti == tj) | (si == sj),
  }
  for attend, rule in rules.items():
    np.testing.assert_array_equal(dependence(attend, layout, T * S),
                                  expected(rule, space_major), err_msg=attend.__name__)


def test_frames_rule_gives_cls_every_frame_and_the_mean():
  layout = layers.TokenLayout(frames=T, cls_token=True, space_major=True)
  np.testing.assert_array_equal(dependence(layers.attend_within_frames, layout, 1 + T * S),
                                expected(lambda ti, si, tj, sj: ti == tj, True, cls=True))
  # CLS's output is the mean of what it gets from each frame alone.
  q, k, v = jax.random.normal(jax.random.key(2), (3, 1, 1 + T * S, HEADS, D // HEADS))
  out = layers.attend_within_frames(q, k, v, layout)
  per_frame = []
  for t in range(T):
    frame = lambda x: jnp.concatenate([x[:, :1], layout.split(x)[1][:, t]], axis=1)
    per_frame.append(jax.nn.dot_product_attention(frame(q), frame(k), frame(v))[:, 0])
  np.testing.assert_allclose(out[:, 0], jnp.mean(jnp.stack(per_frame), 0), rtol=1e-5, atol=1e-6)


def test_layout_orders():
  x = jnp.arange(1 + T * S)[None, :, None]  # token indices
  for space_major in (False, True):
    layout = layers.TokenLayout(frames=T, cls_token=True, space_major=space_major)
    cls, grid = layout.split(x)
    assert cls[0, 0, 0] == 0 and grid.shape == (1, T, S, 1)
    t, s = 2, 1  # n = 1 + s T + t (space-major) or 1 + t S + s (time-major)
    assert grid[0, t, s, 0] == (1 + s * T + t if space_major else 1 + t * S + s)
    np.testing.assert_array_equal(layout.join(cls, grid), x)


def tokens(seed=0, n=T * S):
  return jax.random.normal(jax.random.key(seed), (2, n, D))


def test_timesformer_temporal_step_starts_as_identity_and_skips_cls():
  layout = layers.TokenLayout(frames=T, cls_token=True, space_major=True)
  block = layers.Block(D, HEADS, attention="divided", layout=layout, rngs=nnx.Rngs(0))
  fc = block.temporal.fc
  assert not np.any(fc.kernel[...]) and not np.any(fc.bias[...])  # temporal_fc starts at zero
  x = tokens(n=1 + T * S)
  np.testing.assert_array_equal(block.temporal(x, 0.0, None), x)
  fc.kernel[...] = jax.random.normal(jax.random.key(3), fc.kernel.shape)
  fc.bias[...] = jnp.ones(fc.bias.shape)
  y = block.temporal(x, 0.0, None)
  np.testing.assert_array_equal(y[:, 0], x[:, 0])  # CLS passes the temporal step unchanged
  assert not np.allclose(y[:, 1:], x[:, 1:])


def test_factorised_self_is_space_then_time():
  """ViViT model 3's block = a within-frames residual step, then a within-positions one."""
  layout = layers.TokenLayout(frames=T)
  block = layers.Block(D, HEADS, attention="factorised_self", layout=layout, rngs=nnx.Rngs(0))
  x = tokens()
  y = x + block.attn(block.norm1(x))
  y = y + block.temporal.attn(block.temporal.norm(y))
  y = y + block.mlp(block.norm2(y))
  np.testing.assert_allclose(block(x), y, rtol=1e-6, atol=1e-6)
  assert block.temporal.fc is None


def test_bad_block_arguments():
  layout = layers.TokenLayout(frames=T)
  with pytest.raises(ValueError, match="num_heads=3 must be even"):
    layers.Block(24, 3, attention="factorised_dot", layout=layout, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'factorised_self' needs the token layout"):
    layers.Block(D, HEADS, attention="factorised_self", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="attention 'axial' is unknown"):
    layers.Block(D, HEADS, attention="axial", layout=layout, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="remat 'some' is unknown"):
    layers.Block(D, HEADS, remat="some", rngs=nnx.Rngs(0))


def test_videomae_parameter_names_are_unchanged():
  """Checkpoints of the joint-attention models keep their paths (k_bias and the temporal step
  only exist where asked for)."""
  block = layers.Block(D, HEADS, rngs=nnx.Rngs(0))
  names = {"/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(
      nnx.state(block, nnx.Param))}
  assert names == {"norm1/scale", "norm1/bias", "attn/qkv", "attn/q_bias", "attn/v_bias",
                   "attn/proj", "attn/proj_bias", "norm2/scale", "norm2/bias", "mlp/fc1/kernel",
                   "mlp/fc1/bias", "mlp/fc2/kernel", "mlp/fc2/bias"}


# ---- remat ----

def tiny_config(name, attention="joint", mae=None, **model):
  c = configuration.base()
  c.model.name, c.model.attention, c.model.size = name, attention, "Ti"
  c.model.width, c.model.depth, c.model.num_heads = 32, 2, 4
  c.model.patch_size = (1, 8, 8) if name == "timesformer" else (2, 8, 8)
  c.model.drop_path = 0.2
  if name == "vivit":
    c.model.vivit.temporal_depth = 1
  c.model.update(model)
  c.model.mae.update(mae or {})
  c.data.num_frames, c.data.crop_size, c.data.num_classes = 4, 16, 5
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


MAR = dict(masking="tube", mask_ratio=0.5, mae=dict(
    classifier="bridge", decoder_width=32, decoder_depth=1, decoder_heads=4, bridge_width=32,
    bridge_depth=1))


def test_remat_gives_the_same_gradients():
  """On MAR's encoder, decoder and bridging classifier, with drop path on (the recomputation
  must redraw the same masks)."""
  video = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  keep = jnp.array([[0, 2, 4, 6], [1, 3, 5, 7]])
  c = tiny_config("mae", **MAR)
  # Random parameters without compiling an init: numpy draws into the abstract state.
  rng = np.random.default_rng(0)
  params, rest = nnx.state(nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0))),
                           nnx.Param, ...)
  params = jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype),
                        params)

  def grad(remat):
    c = tiny_config("mae", remat=remat, **MAR)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0))))

    def loss(params):
      logits, aux = nnx.merge(graphdef, params, rest)(video, train=True, key=jax.random.key(1),
                                                      keep=keep)
      return jnp.sum(logits ** 2) + jnp.sum(aux["loss"])
    return jax.grad(loss)

  remats = ("none", "full", "dots")
  traced = jax.jit(lambda params: [grad(remat)(params) for remat in remats]).trace(params)
  # Each of the 4 blocks (2 encoder, 1 decoder, 1 bridge) recomputed under full and dots.
  assert str(traced.jaxpr).count("remat") == 2 * 4
  plain, *rematted = traced.lower().compile()(params)
  for remat, grads in zip(remats[1:], rematted):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain)[0],
                            jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{remat} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name, attention", [("vit", "joint"), ("timesformer", "divided"),
                                             ("vivit", "factorised_encoder")])
def test_every_model_passes_remat_to_its_blocks(name, attention):
  c = tiny_config(name, attention, remat="dots")
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  blocks = [m for _, m in nnx.iter_graph(model) if isinstance(m, layers.Block)]
  assert len(blocks) == 2 + (name == "vivit") and all(b.remat == "dots" for b in blocks)


def _gpu(platform_version="cuda 12080", compute_capability="9.0"):
  """A stand-in for a jax.Device of a GPU backend."""
  return types.SimpleNamespace(platform="gpu", compute_capability=compute_capability,
                               client=types.SimpleNamespace(platform_version=platform_version))


def test_cudnn_attention_only_where_it_runs():
  h200 = _gpu()
  assert layers.attention_kernel(jnp.bfloat16, 64, h200) == "cudnn"
  assert layers.attention_kernel(jnp.float16, 128, h200) == "cudnn"
  assert layers.attention_kernel(jnp.float32, 64, h200) == "xla"  # no float32 flash kernel
  assert layers.attention_kernel(jnp.bfloat16, 60, h200) == "xla"  # not a multiple of 8
  assert layers.attention_kernel(jnp.bfloat16, 256, h200) == "xla"
  assert layers.attention_kernel(jnp.bfloat16, 64, _gpu(compute_capability="7.5")) == "xla"
  assert layers.attention_kernel(jnp.bfloat16, 64, _gpu(platform_version="rocm 6.3")) == "xla"
  assert layers.attention_kernel(jnp.bfloat16, 64, jax.devices("cpu")[0]) == "xla"


def test_attention_passes_the_chosen_kernel_and_computes_softmax_attention(monkeypatch):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 6, 4, 8))
  expected = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(
      jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8), axis=-1), v)
  np.testing.assert_allclose(layers.dot_product_attention(q, k, v), expected, atol=1e-5)
  seen = []
  monkeypatch.setattr(layers, "attention_kernel", lambda *args: "cudnn")
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *args, implementation: seen.append(implementation))
  layers.attend_all(q, k, v, layers.TokenLayout(frames=2))
  with layers.xla_attention():  # what the FLOP counts trace with
    np.testing.assert_allclose(layers.attend_all(q, k, v, layers.TokenLayout(frames=2)),
                               expected, atol=1e-5)
  layers.attend_all(q, k, v, layers.TokenLayout(frames=2))
  assert seen == ["cudnn", "cudnn"]


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_attention_and_its_gradient_match_jax(dtype, atol):
  q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 6, 4, 8), dtype)
  cotangent = jax.random.normal(jax.random.key(2), q.shape, dtype)
  ours, ours_vjp = jax.vjp(layers.dot_product_attention, q, k, v)
  theirs, theirs_vjp = jax.vjp(
      lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), q, k, v)
  assert ours.dtype == dtype
  np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32), atol=atol)
  for a, b in zip(ours_vjp(cotangent), theirs_vjp(cotangent)):
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=atol)
