"""TPS: the temporal patch and channel shifts, the relative position bias over Δt, the Swin
blocks with and without shift, sizes, the ViT plug-in, and a few training steps.
(HF Swin parity without shift: tests/parity/test_tps_parity.py.)"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, configuration, errors, models, optim
from vidtx.models import layers, tps

from conftest import train_losses  # noqa: E402  (tests/models/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def count(model):
  return layers.count_params(nnx.state(model, nnx.Param))


def test_patch_shift_mosaic_and_its_inverse():
  t, h, w = 16, 7, 7
  sources = layers.patch_shift_sources(t, h, w)
  # Pattern C: the frame each position of a 3 x 3 tile takes at frame 8 (SYSTEMS.md's table).
  tile = [[12, 7, 6], [9, 8, 5], [10, 11, 4]]
  for i in range(h):
    for j in range(w):
      assert sources[8, i * w + j] == tile[i % 3][j % 3], (i, j)
  # Every 3 x 3 tile of every frame holds frames t-4 .. t+4, each once (cyclically).
  for frame in range(t):
    for i0 in (0, 3):
      for j0 in (0, 3):
        tile_sources = [sources[frame, (i0 + i) * w + j0 + j] for i in range(3) for j in range(3)]
        assert sorted((s - frame) % t for s in tile_sources) == [0, 1, 2, 3, 4, 12, 13, 14, 15]
  # The shift moves tokens as the table says, and shifting back restores the clip.
  x = jax.random.normal(jax.random.key(0), (2, t, h * w, 3))
  shifted = layers.patch_shift(x, h, w)
  np.testing.assert_array_equal(shifted[:, 8, 0], x[:, 12, 0])  # (0, 0): frame t + 4
  np.testing.assert_array_equal(shifted[:, 0, 1 * w + 2], x[:, 13, 1 * w + 2])  # (1, 2): t - 3
  np.testing.assert_array_equal(layers.patch_shift(shifted, h, w, inverse=True), x)
  np.testing.assert_array_equal(layers.patch_shift(layers.patch_shift(x, h, w, inverse=True),
                                                   h, w), x)


def test_channel_shift_moves_an_eighth_each_way_per_head():
  t, heads, head_dim = 4, 2, 16  # 2 channels per head each way
  x = jax.random.normal(jax.random.key(0), (1, t, 3, heads * head_dim))
  out = np.asarray(layers.channel_shift(x, heads)).reshape(1, t, 3, heads, head_dim)
  x = np.asarray(x).reshape(1, t, 3, heads, head_dim)
  for frame in range(t):
    previous, following = max(frame - 1, 0), min(frame + 1, t - 1)  # edges keep their own
    np.testing.assert_array_equal(out[:, frame, ..., :2], x[:, previous, ..., :2])
    np.testing.assert_array_equal(out[:, frame, ..., 2:4], x[:, following, ..., 2:4])
    np.testing.assert_array_equal(out[:, frame, ..., 4:], x[:, frame, ..., 4:])


def test_relative_position_bias_over_time():
  frames, window = 4, 3
  attn = tps.WindowAttention(16, 2, frames=frames, window=window, rngs=nnx.Rngs(0))
  table = np.asarray(attn.relative_position_bias_table[...])
  assert table.shape == ((2 * frames - 1) * 5 * 5, 2)
  row = lambda dt, dh, dw: (dt + frames - 1) * 25 + (dh + 2) * 5 + (dw + 2)
  # Channel-shift (and unshifted) blocks: the Δt = 0 rows, the same for every frame.
  plain = np.asarray(attn.bias(patch_shift=False))
  assert plain.shape == (2, 9, 9)
  q, k = 1 * 3 + 2, 2 * 3 + 0  # (1, 2) attends to (2, 0): Δh = -1, Δw = 2
  np.testing.assert_array_equal(plain[:, q, k], table[row(0, -1, 2)])
  # Patch-shift blocks: Δt between the tokens' source frames, a different bias per frame.
  shifted = np.asarray(attn.bias(patch_shift=True))
  assert shifted.shape == (frames, 2, 9, 9)
  sources = layers.patch_shift_sources(frames, window, window)
  for t in range(frames):
    np.testing.assert_array_equal(shifted[t, :, q, k],
                                  table[row(sources[t, q] - sources[t, k], -1, 2)])
  assert {sources[t, q] - sources[t, k] for t in range(frames)} == {-1, 3}  # (t+3) vs (t-2)
  assert not np.allclose(shifted[0], shifted[1])
  np.testing.assert_array_equal(shifted[:, :, 4, 4], np.broadcast_to(table[row(0, 0, 0)],
                                                                     (frames, 2)))
  # With a table tiled over Δt (as inflated from ImageNet) every frame gets the 2-D bias.
  attn.relative_position_bias_table[...] = jnp.tile(jnp.asarray(table[:25]), (7, 1))
  np.testing.assert_array_equal(attn.bias(True), np.broadcast_to(attn.bias(False),
                                                                 (frames, 2, 9, 9)))


def dependence(fn, x):
  """[T, N, T, N] booleans: output token (t, n) depends on input token (t', n')."""
  jacobian = jax.jit(jax.jacfwd(fn))(x)  # [..., T, N, C, ..., T, N, C]
  t, n = x.shape[-3:-1]
  return np.abs(np.asarray(jacobian).reshape(t, n, -1, t, n, x.shape[-1])).sum((2, 5)) > 0


def expected_patch_shift_dependence(frames, height, width):
  """Token (t, n) after shift, attention within the frame and the inverse shift sees input
  (t', n') iff t' = t + s_n - s_n' (mod T): its frame's tokens, each from its source frame."""
  s = (np.arange(frames)[:, None] - layers.patch_shift_sources(frames, height, width))[0]
  t = np.arange(frames)
  return (t[None, None, :, None] - (t[:, None, None, None] + s[None, :, None, None]
                                    - s[None, None, None, :])) % frames == 0


def test_patch_shift_window_attention_sees_the_mosaic():
  frames, window, dim = 6, 3, 8
  attn = tps.WindowAttention(dim, 2, frames=frames, window=window, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 1, frames, window * window, dim))
  graphdef, state = nnx.split(attn)
  shifted = dependence(lambda x: nnx.merge(graphdef, state)(x, patch_shift=True), x)
  np.testing.assert_array_equal(shifted, expected_patch_shift_dependence(frames, window, window))
  plain = dependence(lambda x: nnx.merge(graphdef, state)(x), x)
  same_frame = np.eye(frames, dtype=bool)[:, None, :, None]
  np.testing.assert_array_equal(plain, np.broadcast_to(same_frame, plain.shape))


def block(temporal, shift=0, seed=0):
  return tps.SwinBlock(16, 2, frames=4, resolution=4, window=2, shift=shift, temporal=temporal,
                       rngs=nnx.Rngs(seed))


def test_blocks_differ_from_plain_swin_only_by_the_shift():
  """On a clip of one repeated frame the shifts move nothing, so with a bias table tiled over
  Δt the channel- and patch-shift blocks compute the plain Swin block; on a moving clip they
  differ, and only the plain block keeps frames apart."""
  plain, channel, patch = block("none", 1), block("channel", 1), block("patch", 1)
  table = plain.attn.relative_position_bias_table[...]
  plain.attn.relative_position_bias_table[...] = jnp.tile(table[:9], (7, 1))
  for other in (channel, patch):  # the same weights
    nnx.update(other, nnx.state(plain))
  run = nnx.jit(lambda m, x: m(x))
  frame = jax.random.normal(jax.random.key(2), (2, 1, 4, 4, 16))
  static = jnp.repeat(frame, 4, axis=1)
  for other in (channel, patch):
    np.testing.assert_allclose(run(other, static), run(plain, static), rtol=1e-5, atol=1e-5)
  moving = jax.random.normal(jax.random.key(3), (2, 4, 4, 4, 16))
  for other in (channel, patch):
    assert not np.allclose(run(other, moving), run(plain, moving), atol=1e-3)
  # The plain block is a 2-D Swin block per frame: frame 0 alone gives the same output.
  np.testing.assert_allclose(run(plain, moving)[:, :1],
                             run(plain, moving.at[:, 1:].set(0.0))[:, :1], rtol=1e-5, atol=1e-6)


def test_stages_alternate_channel_and_patch_shift():
  model = nnx.eval_shape(lambda: tps.SwinTPS(num_frames=8, image_size=32, width=16,
                                             depths=(2, 3), num_heads=2, window=4,
                                             rngs=nnx.Rngs(0)))
  kinds = [[(b.temporal, b.window, b.shift) for b in stage.blocks] for stage in model.stages]
  # Stage 0: 8x8 tokens in 4x4 windows, odd blocks shifted by 2; stage 1: one 4x4 window.
  assert kinds == [[("channel", 4, 0), ("patch", 4, 2)],
                   [("channel", 4, 0), ("patch", 4, 0), ("channel", 4, 0)]]
  plain = nnx.eval_shape(lambda: tps.SwinTPS(num_frames=8, image_size=32, width=16,
                                             depths=(2, 3), num_heads=2, window=4, shift=False,
                                             rngs=nnx.Rngs(0)))
  assert {b.temporal for stage in plain.stages for b in stage.blocks} == {"none"}
  assert count(plain) == count(model)


def test_parameter_counts_match_the_paper():
  """32x224, 400 classes: TPS-B 89,065,688 (the paper's 89.1M), TPS-T 28,531,222. Each is the
  ImageNet Swin (B 87,768,224, T 28,288,354 with a 1000-class head) with a 400-class head, the
  patch kernel over 2 frames, and relative position tables 31x larger (2T-1 = 31 Δt rows of
  13 x 13 per head, T = 16 token frames)."""
  counts = {}
  for name, (width, depths, heads) in tps.SIZES.items():
    counts[name] = count(nnx.eval_shape(lambda: tps.TPS(
        num_classes=400, num_frames=32, image_size=224, width=width, depths=depths,
        num_heads=heads, rngs=nnx.Rngs(0))))
    feature = width * 8
    heads_per_block = sum(d * heads * 2 ** i for i, d in enumerate(depths))
    extra = 30 * 13 * 13 * heads_per_block + 4 * 4 * 3 * width
    imagenet = {"swin_b": 87_768_224, "swin_t": 28_288_354}[name]
    assert counts[name] == imagenet - 1000 * (feature + 1) + 400 * (feature + 1) + extra
  assert counts == {"swin_t": 28_531_222, "swin_b": 89_065_688}
  assert round(counts["swin_b"] / 1e6, 1) == 89.1


def test_patch_shift_in_vit_blocks():
  """The ViT plug-in (attention="patch_shift"): within-frame attention over shifted q, k, v,
  shifted back; a CLS token (pool="cls") takes part in every frame."""
  frames, height, width, dim = 5, 2, 3, 8
  layout = layers.TokenLayout(frames=frames, width=width)
  attention = layers.Attention(dim, 2, attend=layers.attend_patch_shift, layout=layout,
                               rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(attention)
  x = jax.random.normal(jax.random.key(1), (1, frames * height * width, dim))
  seen = dependence(lambda x: nnx.merge(graphdef, state)(x.reshape(1, -1, dim)).reshape(
      frames, height * width, dim), x.reshape(frames, height * width, dim))
  np.testing.assert_array_equal(seen, expected_patch_shift_dependence(frames, height, width))
  with pytest.raises(ValueError, match="needs the grid width"):
    layers.attend_patch_shift(x[:, :, None], x[:, :, None], x[:, :, None],
                              layers.TokenLayout(frames=frames))
  c = configuration.base()
  c.model.name, c.model.attention, c.model.vit.pool = "vit", "patch_shift", "cls"
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", 32, 1, 2
  c.model.patch_size, c.data.num_frames, c.data.crop_size = (2, 8, 8), 8, 32
  configuration.validate(c, num_devices=1, num_processes=1)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert model.encoder.blocks[0].attn.attend is layers.attend_patch_shift
  logits, _ = nnx.eval_shape(lambda m, v: m(v), model, jnp.ones((1, 8, 32, 32, 3)))
  assert logits.shape == (1, 8)
  c.model.masking, c.model.mask_ratio = "tube", 0.5
  with pytest.raises(errors.ConfigError, match=r"model\.masking='tube': attention="
                                                      r"'patch_shift' needs every token"):
    configuration.validate(c, num_devices=1, num_processes=1)


def synthetic():
  return configuration.load(os.path.join(ROOT, "configs", "tps_k400.py:cpu"))


@pytest.mark.parametrize("fields, field, message", [
    ({"model.size": "B"}, "model.size", "choose one of .'swin_t', 'swin_b'. for model.name='tps'"),
    ({"data.crop_size": 40}, "data.crop_size", "stage 0's 10x10 token grid"),
    ({"model.num_heads": 8}, "model.num_heads", "must be at least 8"),
    ({"model.tps.stage_depths": (2, 0)}, "model.tps.stage_depths", "blocks per stage"),
    ({"model.attention": "joint"}, "model.attention", "takes one of"),
    ({"optim.layer_decay": 0.75}, "optim.layer_decay", "optim.lr_scales"),
    ({"model.masking": "tube", "model.mask_ratio": 0.5}, "model.masking", "sees every token"),
])
def test_config_errors_name_the_field(fields, field, message):
  c = synthetic()
  c.update_from_flattened_dict(fields)
  with pytest.raises(errors.ConfigError, match=rf"config\.{field}=.*{message}"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_synthetic_config_trains():
  c = synthetic()
  assert (c.model.width, c.model.num_heads, c.model.tps.stage_depths) == (48, 3, (2, 2))
  # One stage of a channel- and a patch-shift block halves the compile (patch merging is
  # covered by the parity test).
  c.model.tps.stage_depths = (2,)
  losses = train_losses(c, steps=6)
  print(losses.round(3))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
  model = models.build(c.model, c.data, nnx.Rngs(0))
  with pytest.raises(ValueError, match="sees every token"):
    model(jnp.zeros((1, 8, 32, 32, 3)), keep=jnp.zeros((1, 2), int))
  with pytest.raises(ValueError, match="built for clips of 8 frames of 32.*set config.data"):
    model(jnp.zeros((1, 4, 32, 32, 3)))


def test_optimizer_scales_the_backbone_and_spares_the_tables():
  c = synthetic()
  c.optim.lr_scales = (("^backbone/", 0.1),)  # the recipe's, which the synthetic run drops
  setup = builder.build(c)  # the model and AdamW, abstractly
  params = nnx.to_pure_dict(setup.abstract_state["model"])  # the model's: all parameters
  attn = params["backbone"]["stages"][0]["blocks"][1]["attn"]
  mask = optim.decay_mask(params)
  assert mask["backbone"]["stages"][0]["blocks"][1]["attn"]["qkv"] and mask["head"]["kernel"]
  assert not mask["backbone"]["stages"][0]["blocks"][1]["attn"]["relative_position_bias_table"]
  assert not mask["backbone"]["patch_norm"]["scale"] and attn["proj"].ndim == 3
  ones = jax.tree.map(lambda x: jnp.ones(x.shape), params)
  scaled, _ = optim.scale_by_lr_scales(c.optim.lr_scales).update(ones, None)
  assert scaled["head"]["kernel"][0, 0] == 1.0
  assert {round(float(x.ravel()[0]), 6) for x in jax.tree.leaves(scaled["backbone"])} == {0.1}


def test_recipes_follow_the_reference():
  k400 = configuration.load(os.path.join(ROOT, "configs", "tps_k400.py"))
  ssv2 = configuration.load(os.path.join(ROOT, "configs", "tps_ssv2.py:swin_b"))
  assert (k400.model.size, ssv2.model.size) == ("swin_t", "swin_b")
  assert (k400.data.num_frames, k400.data.frame_stride, k400.data.crop_size) == (32, 2, 224)
  assert (ssv2.data.num_frames, ssv2.data.sampler, ssv2.data.flip) == (32, "segment",
                                                                       "swap_labels")
  assert (k400.data.eval_clips, k400.data.eval_crops, ssv2.data.eval_clips) == (4, 3, 1)
  for c in (k400, ssv2):
    assert (c.optim.lr, c.optim.weight_decay, c.optim.lr_scales) == (1e-3, 0.02,
                                                                    (("^backbone/", 0.1),))
    assert (c.model.drop_path, c.model.head_dropout, c.model.attention) == (0.1, 0.5,
                                                                            "patch_shift")
  assert (ssv2.data.random_erasing, ssv2.label_smoothing, ssv2.data.randaugment_layers) == (
      0.25, 0.1, 4)
