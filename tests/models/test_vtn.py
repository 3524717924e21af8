"""VTN: sliding-window + global attention, frame positions, any number of frames, its config.
(Numbers against HF Longformer and ViT: tests/parity/test_vtn_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors
from vidtx.models import layers, vtn

WIDTH, HEADS = 16, 2


def tiny_config(**overrides):
  c = configuration.base()
  c.model.update(name="vtn", attention="space_only", size="Ti", width=32, depth=1, num_heads=4,
                 patch_size=(1, 8, 8))
  c.model.vtn.update(temporal_depth=1, window=1)
  c.data.update(num_frames=4, crop_size=16, min_resize=16, num_classes=8)
  c.update_from_flattened_dict(overrides)
  return c


def test_vtn_b_has_the_reference_parameters():
  """timm ViT-B/16 without its classifier (85.8M), a 3-layer Longformer of width 768 (each
  layer: local and global q, k, v, output, 2 LNs, FFN 3072) with 288 positions and 2 token
  types, the temporal CLS and the head LN -> 768 -> 400."""
  c = configuration.load("configs/vtn_k400.py")
  model = nnx.eval_shape(lambda: vtn.build(c.model, c.data, nnx.Rngs(0)))
  counts = {name: layers.count_params(nnx.state(getattr(model, name), nnx.Param))
            for name in ("encoder", "norm", "temporal")}
  assert counts["encoder"] + counts["norm"] == 85_798_656  # timm vit_base_patch16_224, 0 classes
  d = 768
  layer = 7 * (d * d + d) + 2 * 2 * d + (d * 3072 + 3072) + (3072 * d + d)
  assert counts["temporal"] == 3 * layer + 288 * d + 2 * d + 2 * d + d
  total = layers.count_params(nnx.state(model, nnx.Param))
  assert total - sum(counts.values()) == 2 * d + (d * d + d) + (d * 400 + 400)
  assert total == 113_502_352


def attention_layer(window, n=8):
  layer = vtn.LongformerAttention(WIDTH, HEADS, window=window, dropout=0.0, dtype=jnp.float32,
                                  rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, n, WIDTH))
  return layer, x


@pytest.mark.parametrize("window", [1, 2])
def test_frames_see_their_window_and_the_cls_and_the_cls_sees_everything(window):
  layer, x = attention_layer(window)
  n = x.shape[1]
  # Example 1 + j has input token j changed; sees[i, j]: did output token i change?
  changed = jnp.concatenate([x, x + jnp.eye(n)[:, :, None]])
  out = np.asarray(layer(changed))
  sees = (np.abs(out[1:] - out[:1]).sum(-1) > 0).T
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  expected = (np.abs(i - j) <= window) | (i == 0) | (j == 0)
  np.testing.assert_array_equal(sees, expected)


def test_the_cls_row_uses_the_global_projections():
  layer, x = attention_layer(2)
  before = layer(x)
  layer.query_global.kernel[...] = layer.query_global.kernel[...] * 2
  after = layer(x)
  assert not np.allclose(before[:, 0], after[:, 0])
  np.testing.assert_array_equal(before[:, 1:], after[:, 1:])


def test_frame_positions_are_strided_frame_indices_mod_286():
  np.testing.assert_array_equal(vtn.frame_positions(16, 8), np.arange(16) * 8)
  np.testing.assert_array_equal(vtn.frame_positions(4, 100, start=50), [50, 150, 250, 64])
  assert vtn.CLS_POSITION == 286 and vtn.NUM_POSITIONS == 288


def test_any_number_of_frames_evaluation_at_frame_0_training_at_a_random_start():
  c = tiny_config(**{"data.frame_stride": 3, "model.vtn.dropout": 0.0,
                     "model.head_dropout": 0.0})  # built for 4 frames; no dropout

  @jax.jit
  def run(video, keys):
    model = vtn.build(c.model, c.data, nnx.Rngs(0))
    logits, aux = model(video)
    # Evaluation: positions 0, 3, 6, ...; the CLS token's features into the head.
    tokens = model.temporal(model.frame_features(video), 3 * jnp.arange(video.shape[1]))
    x = jax.nn.gelu(model.head_hidden(model.head_norm(tokens[:, 0])), approximate=False)
    trained = [model(video, train=True, key=key)[0] for key in keys]
    return logits, aux, model.head(x), trained

  video = jax.random.normal(jax.random.key(1), (2, 7, 16, 16, 3))
  logits, aux, expected, (a, b, a_again) = run(video, [jax.random.key(k) for k in (0, 1, 0)])
  assert logits.shape == (2, 8) and aux == {}
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  # Training: the key draws the start, the only randomness left.
  assert not np.allclose(a, b) and not np.allclose(a, logits)
  np.testing.assert_array_equal(a, a_again)


@pytest.mark.parametrize("field, value, message", [
    ("model.patch_size", (2, 8, 8), "VTN embeds each frame's square 2-D patches"),
    ("model.vtn.window", 0, "at least 1 frame on each side"),
    ("model.vtn.dropout", 1.0, "must be in"),
    ("model.attention", "joint", "model.name='vtn' takes one of"),
])
def test_bad_vtn_fields_name_themselves(field, value, message):
  c = tiny_config(**{field: value})
  with pytest.raises(errors.ConfigError, match=f"config.{field}=.*{message}"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_masking_is_refused():
  c = tiny_config()
  model = nnx.eval_shape(lambda: vtn.build(c.model, c.data, nnx.Rngs(0)))
  with pytest.raises(ValueError, match="masking='none'"):
    model(jnp.zeros((1, 4, 16, 16, 3)), keep=jnp.zeros((1, 2), jnp.int32))
