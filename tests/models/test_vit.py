import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors
from vidtx.models import layers, vit


def tiny(**kw):
  args = dict(num_classes=5, num_frames=4, image_size=32, patch_size=(2, 8, 8), width=32,
              depth=2, num_heads=4)
  args.update(kw)
  return vit.VideoViT(**args, rngs=nnx.Rngs(0))


def logits_of(model, *args, **kwargs):
  logits, aux = model(*args, **kwargs)
  assert aux == {}  # a plain classifier has no extra losses
  return logits


def test_vit_b_has_videomae_parameter_count():
  # VideoMAE ViT-B, 16x224, tubelet 2x16x16, sinusoidal PE, mean pool + fc_norm, 400 classes.
  model = nnx.eval_shape(lambda: vit.VideoViT(num_classes=400, num_frames=16, image_size=224,
                                              rngs=nnx.Rngs(0)))
  assert layers.count_params(nnx.state(model, nnx.Param)) == 86_534_800


def test_learned_position_embedding_and_cls_add_their_parameters():
  base = layers.count_params(nnx.state(tiny(), nnx.Param))
  learned = layers.count_params(nnx.state(tiny(pos_embed="learned"), nnx.Param))
  cls = layers.count_params(nnx.state(tiny(pos_embed="learned", pool="cls"), nnx.Param))
  assert learned - base == 2 * 4 * 4 * 32  # tokens x width
  assert cls - learned == 32 + 32  # the CLS token and its position


@pytest.mark.parametrize("pool", vit.POOLS)
def test_output_shape_and_dtype(pool):
  model = tiny(pool=pool, pos_embed="learned")
  logits = logits_of(model, jnp.ones((3, 4, 32, 32, 3)))
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32


def test_first_pool_classifies_the_first_normalised_token_without_a_cls_token():
  """pool="first" is VideoMAE with use_mean_pooling=False: the final LayerNorm on every token,
  then the first (tubelet) token to the head; the parameters are the mean-pool model's."""
  model = tiny(pool="first")
  assert model.encoder.cls_token is None
  assert (layers.count_params(nnx.state(model, nnx.Param))
          == layers.count_params(nnx.state(tiny(), nnx.Param)))
  video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
  tokens = model.encoder(video)
  assert tokens.shape == (2, 32, 32)
  np.testing.assert_allclose(logits_of(model, video), model.head(model.norm(tokens)[:, 0]),
                             rtol=1e-6)
  assert not np.allclose(logits_of(model, video), model.head(model.norm(tokens.mean(axis=1))))


def test_first_pool_under_masking_is_a_config_error():
  c = configuration.base()
  c.model.vit.pool, c.model.masking, c.model.mask_ratio = "first", "random", 0.5
  with pytest.raises(errors.ConfigError, match=r"config\.model\.vit\.pool='first': under "
                                               r"masking the first token"):
    configuration.validate(c, num_devices=1, num_processes=1)
  c.model.vit.pool = "pools"
  with pytest.raises(errors.ConfigError, match=r"model\.vit\.pool='pools': choose one of "
                                               r"\('mean', 'cls', 'first'\)"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = tiny(dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  logits = logits_of(model, jnp.ones((2, 4, 32, 32, 3)))
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, logits_of(tiny(), jnp.ones((2, 4, 32, 32, 3))), atol=0.1)


def test_every_parameter_has_logical_axes():
  state = nnx.state(tiny(pos_embed="learned", pool="cls"), nnx.Param)
  for path, var in jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    axes = var.get_metadata()["out_sharding"]
    assert len(axes) == var[...].ndim, path


def test_tubelet_embedding_equals_conv3d():
  embed = layers.TubeletEmbed((2, 8, 8), 3, 16, rngs=nnx.Rngs(0))
  video = jax.random.normal(jax.random.key(1), (2, 4, 16, 24, 3))
  conv = jax.lax.conv_general_dilated(
      video, embed.kernel[...], window_strides=(2, 8, 8), padding="VALID",
      dimension_numbers=("NTHWC", "THWIO", "NTHWC")) + embed.bias[...]
  # Tokens are in (t, h, w) order.
  np.testing.assert_allclose(embed(video), conv.reshape(2, -1, 16), rtol=1e-5, atol=1e-5)
  assert embed.grid(video.shape) == (2, 2, 3)


def test_tubelet_embedding_rejects_indivisible_video():
  embed = layers.TubeletEmbed((2, 8, 8), 3, 16, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="not divisible by the tubelet size 2x8x8"):
    embed(jnp.ones((1, 3, 16, 16, 3)))


def test_sincos_table_matches_formula():
  table = layers.sincos_1d(50, 16)
  n, i = 37, 3
  assert table[n, 2 * i] == pytest.approx(np.sin(n / 10000 ** (2 * i / 16)), abs=1e-6)
  assert table[n, 2 * i + 1] == pytest.approx(np.cos(n / 10000 ** (2 * i / 16)), abs=1e-6)


def test_drop_path_only_in_training_and_follows_the_key():
  model = tiny(drop_path=0.5, head_dropout=0.5)
  video = jax.random.normal(jax.random.key(0), (4, 4, 32, 32, 3))
  eval_out = logits_of(model, video)
  np.testing.assert_array_equal(eval_out, logits_of(model, video, train=False, key=jax.random.key(1)))
  a = logits_of(model, video, train=True, key=jax.random.key(1))
  b = logits_of(model, video, train=True, key=jax.random.key(1))
  c = logits_of(model, video, train=True, key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, eval_out)


def test_drop_path_rates_are_linear():
  assert layers.drop_path_rates(0.1, 5) == pytest.approx([0, 0.025, 0.05, 0.075, 0.1])


def test_drop_path_keeps_expectation():
  x = jnp.ones((20000, 3))
  y = layers.drop_path(x, 0.25, jax.random.key(0))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
  assert float(y.mean()) == pytest.approx(1.0, abs=0.02)


def test_size_presets_and_overrides_build_through_the_config():
  from vidtx import models
  c = configuration.base()
  c.model.size, c.model.depth = "S", 2
  c.data.num_frames, c.data.crop_size = 4, 32
  c.model.patch_size = (2, 16, 16)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert len(model.encoder.blocks) == 2 and model.norm.scale.shape == (384,)
  assert model.encoder.blocks[0].attn.num_heads == 6


@pytest.mark.parametrize("pool", vit.POOLS)
def test_only_kept_tokens_reach_the_output(pool):
  model = tiny(pool=pool, pos_embed="learned")  # grid 2x4x4 = 32 tokens
  video = jax.random.normal(jax.random.key(0), (1, 4, 32, 32, 3))
  everything = jnp.arange(32)[None]
  np.testing.assert_allclose(logits_of(model, video, keep=everything), logits_of(model, video), rtol=1e-6)
  keep = jnp.array([[0, 5, 17, 30]])  # token n = t*16 + h*4 + w
  # Token 1 is (t=0, h=0, w=1): frames 0-1, rows 0-7, columns 8-15. It is masked.
  changed_masked = video.at[:, 0:2, 0:8, 8:16].add(5.0)
  np.testing.assert_allclose(logits_of(model, changed_masked, keep=keep), logits_of(model, video, keep=keep),
                             rtol=1e-6)
  # Token 5 is (t=0, h=1, w=1): rows 8-15, columns 8-15. It is kept.
  changed_kept = video.at[:, 0:2, 8:16, 8:16].add(5.0)
  assert not np.allclose(logits_of(model, changed_kept, keep=keep), logits_of(model, video, keep=keep))
  assert model.encoder(video, keep=keep).shape == (1, 4 + (pool == "cls"), 32)
