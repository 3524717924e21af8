"""init_from an image model: patch kernels and position embeddings inflated to video, and
TimeSformer's temporal attention from the spatial one; the video model starts as the image
model on a clip of one repeated frame."""

import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, checkpoint, configuration, errors, models
from vidtx.models import masking, vit


def image_model_dir(tmp_path, pool="cls"):
  """A 2-D ViT (one-frame tubelets, learned positions) saved as init_from reads it."""
  model = vit.VideoViT(num_classes=5, num_frames=1, image_size=32, patch_size=(1, 8, 8),
                       width=32, depth=2, num_heads=2, pos_embed="learned", pool=pool,
                       rngs=nnx.Rngs(3))
  checkpoint.save_params(str(tmp_path / "image"), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return model, str(tmp_path / "image")


def video_model(tmp_path, inflation="average", **overrides):
  """A video model (a learned-position CLS ViT unless `overrides` say otherwise) init_from the
  image model in <tmp_path>/image."""
  c = configuration.base()
  vit = {"model.vit.pos_embed": "learned", "model.vit.pool": "cls"}
  c.update_from_flattened_dict({
      "model.width": 32, "model.depth": 2, "model.num_heads": 2, "model.patch_size": (2, 8, 8),
      "data.num_frames": 4, "data.num_classes": 5, "init_from_inflation": inflation,
      **(vit if overrides.get("model.name", "vit") == "vit" else {}), **overrides})
  setup = builder.build(c)
  with jax.set_mesh(setup.mesh):
    state = checkpoint.init_from(builder.init_state(setup), str(tmp_path / "image"),
                                 models.family(c.model), masking.token_grid(c.model, c.data),
                                 inflation)
  return nnx.merge(setup.graphdef, state)["model"]


@pytest.mark.parametrize("inflation", ["average", "central"])
def test_an_inflated_vit_gives_the_image_logits_on_a_clip_of_one_repeated_frame(tmp_path,
                                                                                 inflation):
  # Mean-pooled: joint attention over two equal copies of every token is the image's (a CLS
  # token, not repeated, would get another share of the softmax).
  image, _ = image_model_dir(tmp_path, pool="mean")
  video = video_model(tmp_path, inflation, **{"model.vit.pool": "mean"})
  kernel = np.asarray(video.encoder.patch_embed.kernel[...])
  image_kernel = np.asarray(image.encoder.patch_embed.kernel[...])[0]
  if inflation == "average":
    np.testing.assert_allclose(kernel, np.stack([image_kernel / 2] * 2), rtol=1e-6)
  else:  # the central frame of 2 is frame 1
    assert not kernel[0].any()
    np.testing.assert_array_equal(kernel[1], image_kernel)
  frame = jax.random.normal(jax.random.key(0), (1, 1, 32, 32, 3))
  image_logits, _ = image(frame)
  video_logits, _ = video(frame.repeat(4, axis=1))
  # "central" sees only one frame of each tubelet: the same frame here.
  np.testing.assert_allclose(video_logits, image_logits, rtol=1e-4, atol=1e-5)


def test_position_embeddings_are_resized_in_space_and_tiled_over_time(tmp_path):
  image, _ = image_model_dir(tmp_path)
  video = video_model(tmp_path, **{"data.crop_size": 64, "data.min_resize": 64})
  table = np.asarray(image.encoder.pos_embed.embedding[...])
  inflated = np.asarray(video.encoder.pos_embed.embedding[...])
  assert inflated.shape == (1 + 2 * 64, 32)
  np.testing.assert_array_equal(inflated[0], table[0])  # CLS
  frames = inflated[1:].reshape(2, 8, 8, 32)
  np.testing.assert_array_equal(frames[0], frames[1])
  expected = jax.image.resize(table[1:].reshape(4, 4, 32), (8, 8, 32), "bicubic")
  np.testing.assert_allclose(frames[0], expected, rtol=1e-5, atol=1e-6)


def test_timesformer_from_an_image_vit_starts_as_the_image_model(tmp_path):
  image, _ = image_model_dir(tmp_path)
  video = video_model(tmp_path, **{"model.name": "timesformer", "model.attention": "divided",
                                   "model.patch_size": (1, 8, 8)})
  block = video.blocks[0]
  np.testing.assert_array_equal(block.temporal.attn.qkv[...], block.attn.qkv[...])
  np.testing.assert_array_equal(block.attn.qkv[...], image.encoder.blocks[0].attn.qkv[...])
  frame = jax.random.normal(jax.random.key(1), (1, 1, 32, 32, 3))
  image_logits, _ = image(frame)
  video_logits, _ = video(frame.repeat(4, axis=1))
  np.testing.assert_allclose(video_logits, image_logits, rtol=1e-4, atol=1e-5)


def test_a_bad_inflation_is_a_config_error():
  c = configuration.base()
  c.init_from_inflation = "tile"
  with pytest.raises(errors.ConfigError, match="init_from_inflation='tile'"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_an_hf_image_vit_converted_and_inflated_into_timesformer_gives_its_logits(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from vidtx.tools import convert_weights
  torch.manual_seed(0)
  hf = transformers.ViTForImageClassification(transformers.ViTConfig(
      image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=128, num_labels=5, layer_norm_eps=1e-6)).eval()
  hf.save_pretrained(str(tmp_path / "hf"))
  timesformer = {"model.name": "timesformer", "model.attention": "divided",
                 "model.patch_size": (1, 8, 8)}
  c = configuration.base()
  c.update_from_flattened_dict({"model.width": 32, "model.depth": 2, "model.num_heads": 2,
                                "data.num_frames": 4, "data.num_classes": 5, **timesformer})
  convert_weights.convert(c, str(tmp_path / "hf"), str(tmp_path / "image"))
  video = video_model(tmp_path, **timesformer)
  frame = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = hf(pixel_values=torch.from_numpy(frame)).logits.numpy()
  clip = np.repeat(frame.transpose(0, 2, 3, 1)[:, None], 4, axis=1)  # [1, 4, 32, 32, 3]
  np.testing.assert_allclose(video(clip)[0], expected, rtol=1e-4, atol=1e-5)
