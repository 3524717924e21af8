import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors
from vidtx.models import layers, timesformer

from conftest import train_losses  # noqa: E402  (tests/models/conftest.py)


def count(model):
  return layers.count_params(nnx.state(model, nnx.Param))


def test_parameter_counts_match_the_paper():
  """ViT-B/16, 8x224, 400 classes. The paper's Table 1 gives 121.4M (divided) and 85.9M (space,
  joint): those are these models with a 174-class head (its SSv2 column); with Kinetics' 400
  classes they are 121.6M and 86.1M."""
  counts = {attention: count(nnx.eval_shape(lambda: timesformer.TimeSformer(
      num_classes=400, num_frames=8, image_size=224, attention=attention, rngs=nnx.Rngs(0))))
      for attention in timesformer.ATTENTIONS}
  assert counts == {"divided": 121_566_352, "joint": 86_112_400, "space_only": 86_106_256}
  # Divided adds per block a temporal LN, attention (with k bias) and temporal_fc.
  assert counts["divided"] - counts["joint"] == 12 * (2 * 768 + (768 * 3 * 768 + 3 * 768)
                                                      + (768 * 768 + 768) * 2)
  assert counts["joint"] - counts["space_only"] == 8 * 768  # the time embedding
  head_174 = {k: v - (400 - 174) * (768 + 1) for k, v in counts.items()}
  assert {k: round(v / 1e6, 1) for k, v in head_174.items()} == {
      "divided": 121.4, "joint": 85.9, "space_only": 85.9}


def tiny(attention="divided", **kw):
  return timesformer.TimeSformer(num_classes=5, num_frames=3, image_size=16, patch_size=8,
                                 width=8, depth=1, num_heads=2, attention=attention,
                                 rngs=nnx.Rngs(0), **kw)


def test_tokens_are_space_major_with_time_embedding_on_patches_only():
  """With zero pixels the tokens are the embeddings alone: give position s and time t
  recognisable rows and read them back at n = 1 + s T + t."""
  model = tiny()
  model.cls_token[...] = jnp.zeros_like(model.cls_token[...])
  pos = jnp.zeros((1 + 4, 8)).at[1:, 0].set(jnp.arange(4.0) + 1)  # position s -> s + 1
  model.pos_embed.embedding[...] = pos.at[0, 2].set(7.0)  # CLS's row
  model.time_embed.embedding[...] = jnp.zeros((3, 8)).at[:, 1].set(jnp.arange(3.0) + 1)
  x = model.tokens(jnp.zeros((1, 3, 16, 16, 3)))
  assert x.shape == (1, 1 + 4 * 3, 8)
  np.testing.assert_array_equal(x[0, 0, :3], [0, 0, 7])  # CLS: its position row, no time
  n = np.arange(12)
  np.testing.assert_array_equal(x[0, 1:, 0], n // 3 + 1)  # s = n // T
  np.testing.assert_array_equal(x[0, 1:, 1], n % 3 + 1)  # t = n % T


def test_space_only_keeps_frames_apart_until_the_end():
  model = tiny("space_only")
  assert model.time_embed is None
  x = model.tokens(jnp.zeros((2, 3, 16, 16, 3)))
  assert x.shape == (2 * 3, 1 + 4, 8)  # each frame a clip with its own CLS
  # Frames apart through the blocks, then averaged: their order does not matter.
  video = np.random.default_rng(0).standard_normal((1, 3, 16, 16, 3)).astype(np.float32)
  both_orders = nnx.jit(lambda model, video: (model(video)[0], model(video[:, ::-1])[0]))
  np.testing.assert_allclose(*both_orders(model, video), rtol=1e-5, atol=1e-6)
  divided = tiny("divided")
  divided.blocks[0].temporal.fc.kernel[...] += 0.5  # a live temporal step
  # Frames told apart (the time embedding starts at zero, as the reference's).
  divided.time_embed.embedding[...] = jnp.asarray(
      np.random.default_rng(1).standard_normal((3, 8)), jnp.float32)
  assert not np.allclose(*both_orders(divided, video), atol=1e-4)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="sees every token"):
    tiny()(jnp.zeros((1, 3, 16, 16, 3)), keep=jnp.zeros((1, 2), int))
  with pytest.raises(ValueError, match="built for 3 frames.*got a clip of 4.*data.num_frames"):
    tiny()(jnp.zeros((1, 4, 16, 16, 3)))
  c = configuration.base()
  c.model.name, c.model.attention = "timesformer", "divided"
  c.data.num_frames, c.data.crop_size = 8, 32
  with pytest.raises(errors.ConfigError, match=r"model\.patch_size=\(2, 16, 16\).*\(1, p, p\)"):
    configuration.validate(c, num_devices=1, num_processes=1)
  c.model.patch_size = (1, 16, 16)
  for field, value, message in (("attention", "factorised_dot", "takes one of"),
                                ("masking", "tube", "sees every token"),
                                ("remat", "all", "choose one of")):
    bad = c.copy_and_resolve_references()
    bad.model[field] = value
    with pytest.raises(errors.ConfigError, match=rf"model\.{field}={value!r}: .*{message}"):
      configuration.validate(bad, num_devices=1, num_processes=1)
  c.optim.layer_decay = 0.75
  with pytest.raises(errors.ConfigError, match="optim.layer_decay=0.75: .*not supported"):
    configuration.validate(c, num_devices=1, num_processes=1)


@pytest.mark.parametrize("attention", timesformer.ATTENTIONS)
def test_trains_on_synthetic_clips(tiny_space_time, attention):
  losses = train_losses(tiny_space_time("timesformer", attention))
  print(attention, losses.round(3))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
