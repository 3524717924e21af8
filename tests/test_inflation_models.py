"""Image -> video inflation beyond tests/test_inflation.py: an HF ViTModel into a video ViT (both
kernel inflations), ViViT model 3 (no CLS row; its temporal attention), VTN's
per-frame backbone, the position-table rules in numbers, and the errors for shapes no rule
maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors
from vidtx.weights import inflate

from test_inflation import image_model_dir, video_model  # noqa: E402  (tests/ is on the path)

SIZE, PATCH, WIDTH = 32, 8, 32


def hf_image_vit(tmp_path, classifier):
  """A random tiny HF ViTModel (or ViTForImageClassification, 5 labels) converted for
  init_from into <tmp_path>/image, and the HF model."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from vidtx.tools import convert_weights
  torch.manual_seed(0)
  config = transformers.ViTConfig(image_size=SIZE, patch_size=PATCH, hidden_size=WIDTH,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=4 * WIDTH, num_labels=5, layer_norm_eps=1e-6)
  hf = (transformers.ViTForImageClassification(config) if classifier
        else transformers.ViTModel(config, add_pooling_layer=False)).eval()
  hf.save_pretrained(str(tmp_path / "hf"))
  c = configuration.base()
  c.update_from_flattened_dict({"model.width": WIDTH, "model.depth": 2, "model.num_heads": 2,
                                "model.patch_size": (2, PATCH, PATCH), "data.num_classes": 5})
  convert_weights.convert(c, str(tmp_path / "hf"), str(tmp_path / "image"))
  return hf


def hf_cls_features(hf, frame):
  """HF's final-LN CLS feature of images [B, 3, H, W]."""
  import torch
  vit = getattr(hf, "vit", hf)
  with torch.no_grad():
    return vit(pixel_values=torch.from_numpy(frame)).last_hidden_state[:, 0].numpy()


@pytest.mark.parametrize("inflation", ["central", "average"])
def test_an_hf_vit_model_inflated_into_a_video_vit_gives_its_cls_feature(tmp_path, inflation):
  """Two equal frames are one 2x8x8 tubelet per patch: with the kernel at the central frame
  (zeros at the other) or averaged over both (divided by 2) its token is the image's patch
  token, so the CLS feature is the image's."""
  hf = hf_image_vit(tmp_path, classifier=False)  # no classifier: the head starts fresh
  video = video_model(tmp_path, inflation, **{"data.num_frames": 2})
  frame = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
  clip = np.repeat(frame.transpose(0, 2, 3, 1)[:, None], 2, axis=1)  # [2, 2, 32, 32, 3]
  ours = nnx.jit(lambda m, v: m.norm(m.encoder(v))[:, 0])(video, jnp.asarray(clip))
  np.testing.assert_allclose(ours, hf_cls_features(hf, frame), rtol=1e-4, atol=1e-5)


def test_vtn_backbone_from_an_hf_vit_gives_its_feature_per_frame_and_a_fresh_head(tmp_path):
  hf = hf_image_vit(tmp_path, classifier=True)  # 5 labels; the VTN has 7 classes
  vtn = video_model(tmp_path, **{
      "model.name": "vtn", "model.attention": "space_only", "model.patch_size": (1, 8, 8),
      "model.vtn.temporal_depth": 1, "model.vtn.window": 1, "data.num_classes": 7})
  assert vtn.head.kernel.shape == (WIDTH, 7)  # the classifier of 5 classes is not read
  frames = np.random.default_rng(1).standard_normal((1, 3, 3, SIZE, SIZE)).astype(np.float32)
  ours = nnx.jit(lambda m, v: m.frame_features(v))(
      vtn, jnp.asarray(frames.transpose(0, 1, 3, 4, 2)))
  np.testing.assert_allclose(ours[0], hf_cls_features(hf, frames[0]), rtol=1e-4, atol=1e-5)


def test_vivit_model_3_gets_the_image_positions_without_cls_and_a_silent_time_step(tmp_path):
  """(Model 4 takes the same position table: no CLS row, one row per tubelet.)"""
  image, _ = image_model_dir(tmp_path)
  video = video_model(tmp_path, **{"model.name": "vivit", "model.attention": "factorised_self",
                                   "model.vit.pool": "mean"})
  table = np.asarray(image.encoder.pos_embed.embedding[...])  # CLS + 4 x 4
  inflated = np.asarray(video.encoder.pos_embed.embedding[...])
  np.testing.assert_array_equal(inflated, np.tile(table[1:], (2, 1)))  # 2 x 4 x 4, no CLS
  block, image_block = video.encoder.blocks[1], image.encoder.blocks[1]
  np.testing.assert_array_equal(block.attn.qkv[...], image_block.attn.qkv[...])
  np.testing.assert_array_equal(block.temporal.attn.qkv[...], image_block.attn.qkv[...])
  assert not np.any(block.temporal.attn.proj[...]) and not np.any(
      block.temporal.attn.proj_bias[...])
  x = jax.random.normal(jax.random.key(0), (1, 2 * 16, WIDTH))
  np.testing.assert_array_equal(block.temporal(x, 0.0, None), x)  # starts as the identity


def test_position_tables_are_kept_tiled_or_dropped_of_cls_as_the_model_needs():
  table = np.random.default_rng(0).standard_normal((1 + 16, 4)).astype(np.float32)
  name = "encoder/pos_embed/embedding"
  grid = (2, 4, 4)  # the image's 4 x 4 patches, 2 tubelet frames
  same = inflate.parameter(name, table, (1 + 16, 4), grid, "average")  # a CLS per frame grid
  np.testing.assert_array_equal(same, table)
  tiled = inflate.parameter(name, table, (1 + 32, 4), grid, "average")
  np.testing.assert_array_equal(tiled, np.concatenate([table, table[1:]]))
  no_cls = inflate.parameter(name, table, (32, 4), grid, "average")
  np.testing.assert_array_equal(no_cls, np.tile(table[1:], (2, 1)))
  # A table without a CLS row cannot give a model's CLS row; a video's table is no image's.
  assert inflate.parameter(name, table[1:], (1 + 16, 4), grid, "average") is None
  assert inflate.parameter(name, np.tile(table, (3, 1)), (1 + 16, 4), grid, "average") is None


def test_position_tables_are_resized_bicubically():
  """A table linear in (row, column), 4 x 4 -> 8 x 8: bicubic interpolation reproduces a linear
  function wherever its 4 taps lie inside the table. Output pixel x sits at input
  x / 2 - 1 / 4 (centres aligned), so rows and columns 3 and 4 hold 1.25 and 1.75."""
  ramp = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij"), -1)
  table = np.concatenate([np.full((1, 2), 9.0), ramp.reshape(16, 2)]).astype(np.float32)
  out = inflate.parameter("pos_embed/embedding", table, (1 + 64, 2), (1, 8, 8), "average")
  np.testing.assert_array_equal(out[0], [9.0, 9.0])
  grid = out[1:].reshape(8, 8, 2)
  np.testing.assert_allclose(grid[3:5, 3:5, 0], [[1.25, 1.25], [1.75, 1.75]], atol=1e-6)
  np.testing.assert_allclose(grid[3:5, 3:5, 1], [[1.25, 1.75], [1.25, 1.75]], atol=1e-6)
  assert np.all(np.diff(grid[:, 0, 0]) > 0) and np.all(np.diff(grid[0, :, 1]) > 0)


def test_a_time_embedding_follows_the_frame_count():
  table = np.arange(8.0, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  out = inflate.parameter("time_embed/embedding", table, (16, 3), None, "average")
  np.testing.assert_array_equal(out[:, 0], np.repeat(np.arange(8.0), 2))  # nearest


def test_shapes_no_rule_maps_are_named(tmp_path):
  image_model_dir(tmp_path)
  # 2x4x4 tubelets: the image's 8x8 patch kernel cannot become one.
  with pytest.raises(errors.ConfigError,
                     match=r"(?s)no inflation rule maps.*encoder/patch_embed/kernel: the "
                           r"model's \(2, 4, 4, 3, 32\), the checkpoint's "
                           r"encoder/patch_embed/kernel \(1, 8, 8, 3, 32\)"):
    video_model(tmp_path, **{"model.patch_size": (2, 4, 4)})


@pytest.mark.parametrize("name", ["vit", "timesformer"])
def test_an_hf_clip_tower_inflated_into_a_clip_style_model_gives_its_feature(tmp_path, name):
  """A random HF CLIPVisionModelWithProjection, converted with model.clip_style and inflated
  (average) into a video ViT or a divided TimeSformer: on a clip of one repeated frame (one
  tubelet per patch for the ViT, whose joint attention would otherwise see each patch twice)
  the final-LN CLS token is CLIP's pooled feature (without ln_pre or QuickGELU it is not)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from torch_params import randomise
  from vidtx.tools import convert_weights
  hf = randomise(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
      hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2,
      num_attention_heads=2, image_size=SIZE, patch_size=PATCH, projection_dim=16,
      hidden_act="quick_gelu", layer_norm_eps=1e-5)))
  hf.save_pretrained(str(tmp_path / "hf"))
  fields = {"model.clip_style": True, **(
      {"model.name": "timesformer", "model.attention": "divided", "model.patch_size": (1, 8, 8)}
      if name == "timesformer" else {"model.patch_size": (2, 8, 8), "data.num_frames": 2})}
  c = configuration.base()
  c.update_from_flattened_dict({"model.width": WIDTH, "model.depth": 2, "model.num_heads": 2,
                                "data.num_classes": 5, **fields})
  params = convert_weights.convert(c, str(tmp_path / "hf"), str(tmp_path / "image"))
  assert "head" not in params and "norm_pre" in params["encoder"]
  video = video_model(tmp_path, **fields)
  frame = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
  with torch.no_grad():
    expected = hf.vision_model(pixel_values=torch.from_numpy(frame)).pooler_output.numpy()
  frames = 4 if name == "timesformer" else 2  # the ViT: one 2x8x8 tubelet per patch
  clip = jnp.asarray(np.repeat(frame.transpose(0, 2, 3, 1)[:, None], frames, axis=1))
  if name == "timesformer":
    def feature(m, v):  # TimeSformer's __call__ up to its head
      x = m.tokens(v)
      for block in m.blocks:
        x = block(x)
      return m.norm(x)[:, 0]
  else:
    feature = lambda m, v: m.norm(m.encoder(v))[:, 0]
  np.testing.assert_allclose(nnx.jit(feature)(video, clip), expected, rtol=1e-4, atol=1e-5)


def test_a_clip_checkpoint_asks_for_clip_style(tmp_path):
  from safetensors import numpy as safetensors_numpy
  from vidtx.tools import convert_weights
  path = str(tmp_path / "clip.safetensors")  # enough of a CLIP tower to be told apart
  safetensors_numpy.save_file(
      {"vision_model.embeddings.class_embedding": np.zeros(WIDTH, np.float32)}, path)
  with pytest.raises(ValueError, match=r"model.clip_style=True.*'vit'.*or use model.name in "
                                       r"\['ila'\]"):
    convert_weights.convert(configuration.base(), path, str(tmp_path / "out"))
  c = configuration.base()
  c.update_from_flattened_dict({"model.name": "vivit", "model.clip_style": True})
  with pytest.raises(errors.ConfigError, match="model.clip_style=True"):
    configuration.validate(c, num_devices=1, num_processes=1)
