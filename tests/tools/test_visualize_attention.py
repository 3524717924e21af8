"""Attention rollout: the matrices, the rollout product, and the pictures of a run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from test_predict import write_mp4
from test_train import untrained_run
from vidtx import configuration
from vidtx.models import layers
from vidtx.tools import visualize_attention, visualize_masks


def test_rollout_multiplies_the_half_residual_matrices_last_step_first():
  a1 = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
  a2 = np.array([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5], [0.0, 0.0, 1.0]])
  # (A + I) / 2 by hand.
  h1 = np.array([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.1, 0.15, 0.75]])
  h2 = np.array([[1.0, 0.0, 0.0], [0.125, 0.625, 0.25], [0.0, 0.0, 1.0]])
  r = visualize_attention.rollout([a1, a2], 3)
  np.testing.assert_allclose(r, h2 @ h1)
  np.testing.assert_allclose(r.sum(axis=1), 1.0)
  # A step without the CLS token (token 0) leaves it alone.
  inner = visualize_attention.rollout([a1[1:, 1:] / a1[1:, 1:].sum(1, keepdims=True)], 3)
  assert inner[0].tolist() == [1.0, 0.0, 0.0]
  with pytest.raises(ValueError, match="mixes 2 tokens, not the clip's 4"):
    visualize_attention.rollout([np.eye(2)], 4)


def test_mixing_matrix_is_the_softmax_for_joint_and_within_frames_for_divided():
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 7, 2, 4))
  a = visualize_attention.mixing_matrix(layers.attend_all, q, k, None)[0]
  expected = jax.nn.softmax(jnp.einsum("nhe,mhe->hnm", q[0], k[0]) / 2.0, axis=-1).mean(0)
  np.testing.assert_allclose(a, expected, rtol=1e-5)
  # CLS + 3 frames x 2 positions, space-major as TimeSformer: patch tokens see only their frame,
  # the CLS row is the mean of its per-frame rows.
  layout = layers.TokenLayout(frames=3, cls_token=True, space_major=True)
  a = np.asarray(visualize_attention.mixing_matrix(layers.attend_within_frames, q, k, layout)[0])
  np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
  frame = lambda n: (n - 1) % 3  # token 1 + s T + t
  for n in range(1, 7):
    for m in range(1, 7):
      assert (a[n, m] > 0) == (frame(n) == frame(m))


@pytest.mark.parametrize("name, attention", [("vit", "joint"), ("timesformer", "divided")])
def test_pictures_of_a_run_on_a_video_file(tmp_path, name, attention):
  config = configuration.base()
  config.update_from_flattened_dict({
      "model.name": name, "model.attention": attention, "model.width": 32, "model.depth": 2,
      "model.num_heads": 2, "model.patch_size": (2, 8, 8) if name == "vit" else (1, 8, 8),
      "data.num_frames": 4,
      "data.min_resize": 32, "data.name": "custom", "data.data_dir": str(tmp_path),
      "batch_size": 2, "optim.warmup_steps": 1, "total_steps": 2})
  if name == "vit":
    config.model.vit.update(pos_embed="learned", pool="cls")
  workdir = tmp_path / "run"
  workdir.mkdir()
  untrained_run(config, str(workdir), step=1)
  write_mp4(tmp_path / "clip.mp4", seed=0)
  png, gif = visualize_attention.run(config, str(tmp_path / "out"), workdir=str(workdir),
                                     video_path=str(tmp_path / "clip.mp4"))
  image = np.asarray(Image.open(png).convert("RGB"))
  tile = 32 * visualize_masks.auto_scale(32)  # 32-pixel frames, upscaled
  height, width = visualize_masks.tile_origin(2, 4, (tile, tile))
  assert image.shape == (height, width, 3)
  y, x = visualize_masks.tile_origin(1, 0, (tile, tile))
  overlay = image[y:y + tile, x:x + 4 * tile]
  assert overlay.std() > 10  # not blank
  with Image.open(gif) as animation:
    assert animation.n_frames == 4


def test_mae_rolls_out_its_encoder_and_bridging_classifier_not_the_decoder():
  config = configuration.base()
  config.update_from_flattened_dict({
      "model.name": "mae", "model.mae.classifier": "bridge", "model.masking": "tube",
      "model.mask_ratio": 0.5, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
      "model.mae.bridge_width": 32, "model.mae.bridge_depth": 1, "model.mae.bridge_heads": 2,
      "model.mae.decoder_width": 32, "model.mae.decoder_depth": 1, "model.mae.decoder_heads": 2,
      "model.patch_size": (2, 8, 8), "data.num_frames": 4, "data.min_resize": 32})
  model, _ = visualize_masks.load_model(config)
  video = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  with visualize_attention.recorded_mixing(model) as steps:
    logits = visualize_attention.infer(config, model, jnp.asarray(video)[None])
  assert logits.shape == (1, config.data.num_classes)
  assert [a.shape for a, _ in steps] == [(32, 32)] * 3  # 2 encoder blocks, 1 bridge block
  heat = visualize_attention.relevance(config, model, video)
  assert heat.shape == (2, 4, 4) and heat.min() > 0
  np.testing.assert_allclose(heat.sum(), 1.0, rtol=1e-5)  # the mean of rows that sum to 1


def test_unsupported_attention_is_a_clear_error(tmp_path):
  config = configuration.base()
  config.update_from_flattened_dict({"model.name": "timesformer", "model.attention": "space_only",
                                     "model.patch_size": (1, 16, 16)})
  with pytest.raises(visualize_masks.VisualizeError, match="space_only.*rollout needs"):
    visualize_attention.run(config, str(tmp_path / "out"))
