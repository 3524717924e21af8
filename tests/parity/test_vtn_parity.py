"""VTN against its references: HF `LongformerModel` (the temporal encoder, with HF's own chunked
sliding-window attention), HF `ViTModel` (the per-frame backbone, the same computation as the
reference's timm ViT), and the reference's whole forward (bomri/SlowFast `VTN.forward`, rebuilt
from those HF modules) from a checkpoint in PySlowFast's naming.

HF's `attention_window` counts both sides: attention_window=2w is our window=w.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers, vtn  # noqa: E402
from vidtx.weights import image  # noqa: E402
from vidtx.weights import vtn as vtn_weights  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, SIZE, PATCH, WIDTH, HEADS, DEPTH, CLASSES = 2, 32, 8, 32, 4, 2, 5


def hf_longformer(attention_window, seed=0):
  config = transformers.LongformerConfig(
      hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      intermediate_size=4 * WIDTH, attention_window=[attention_window] * DEPTH,
      max_position_embeddings=vtn.NUM_POSITIONS, type_vocab_size=2, vocab_size=10)
  return randomise(transformers.LongformerModel(config, add_pooling_layer=False), seed)


def hf_vit(seed=1):
  config = transformers.ViTConfig(
      image_size=SIZE, patch_size=PATCH, hidden_size=WIDTH, num_hidden_layers=DEPTH,
      num_attention_heads=HEADS, intermediate_size=4 * WIDTH, layer_norm_eps=1e-6)
  return randomise(transformers.ViTModel(config, add_pooling_layer=False), seed)


def reference_temporal(longformer, cls, features, positions):
  """The reference's Longformer call: [CLS, frames], mask 2 (global) / 1 (local), token types
  1 / 0, positions: CLS 286, frames their indices mod 286. HF pads to its window itself."""
  b, t = features.shape[:2]
  x = torch.cat([cls.expand(b, -1, -1), features], dim=1)
  mask = torch.ones(b, t + 1, dtype=torch.long)
  mask[:, 0] = 2
  types = torch.zeros(b, t + 1, dtype=torch.long)
  types[:, 0] = 1
  position_ids = torch.cat([torch.tensor([vtn.CLS_POSITION]), positions % vtn.CLS_POSITION])
  with torch.no_grad():
    return longformer(inputs_embeds=x, attention_mask=mask, token_type_ids=types,
                      position_ids=position_ids.expand(b, -1)).last_hidden_state


def assert_close(ours, expected):
  ours, expected = np.asarray(ours), np.asarray(expected)
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def temporal_pair(attention_window, window, frames, stride, seed=0):
  """(our temporal encoder's tokens, HF's) for the same random frame features; our encoder
  carries HF's weights and our window `window`."""
  hf = hf_longformer(attention_window)
  abstract = nnx.eval_shape(lambda: vtn.TemporalEncoder(
      WIDTH, DEPTH, HEADS, mlp_ratio=4.0, window=window, dropout=0.1, dtype=jnp.float32,
      rngs=nnx.Rngs(0)))
  hf_config = hf.config.to_dict() if attention_window == 2 * window else None
  params = weights.convert(hf.state_dict(), abstract, (vtn_weights.LONGFORMER,),
                           hf_config=hf_config)
  assert "cls_token" not in params  # a LongformerModel has none: VTN keeps it apart
  params["cls_token"] = np.random.default_rng(seed).standard_normal((1, 1, WIDTH)).astype(
      np.float32)
  ours = with_params(abstract, params)
  features = np.random.default_rng(seed).standard_normal((BATCH, frames, WIDTH))
  features = features.astype(np.float32)
  positions = vtn.frame_positions(frames, stride)
  expected = reference_temporal(hf, torch.tensor(params["cls_token"]), torch.tensor(features),
                                torch.tensor(np.asarray(positions)))
  tokens = nnx.jit(lambda m, x, p: m(x, p))(ours, jnp.asarray(features), positions)
  return tokens, expected[:, :frames + 1].numpy()  # HF's padding left out


# (HF attention_window, frames): 12 tokens fill HF's chunks; 9 tokens make HF pad to 12.
# Stride 40 wraps the frame indices past 286.
@pytest.mark.parametrize("attention_window,frames", [(4, 11), (6, 8)])
def test_temporal_encoder_matches_hf_longformer(attention_window, frames):
  assert_close(*temporal_pair(attention_window, attention_window // 2, frames, stride=40))


def test_hf_attention_window_counts_both_sides():
  """HF's attention_window=4 is 2 frames per side: our window=4 (HF's 8) gives other numbers,
  so the parity above does pin the semantics (the reference's 18 is our 9)."""
  ours, expected = temporal_pair(4, 4, 11, stride=1)
  assert not np.allclose(ours, expected, atol=1e-2)


def our_config(frame_stride=3):
  c = configuration.base()
  c.model.update(name="vtn", attention="space_only", size="Ti", width=WIDTH, depth=DEPTH,
                 num_heads=HEADS, patch_size=(1, PATCH, PATCH))
  c.model.vtn.update(temporal_depth=DEPTH, window=2)
  c.data.update(num_frames=6, frame_stride=frame_stride, crop_size=SIZE, min_resize=SIZE,
                num_classes=CLASSES)
  configuration.validate(c, num_devices=1, num_processes=1)
  return c



def test_the_family_converts_a_longformer_into_its_temporal_encoder():
  """An HF LongformerModel fills a VTN's `temporal/` but its CLS token, which VTN keeps apart
  (convert_weights writes that part; init_from keeps the rest fresh)."""
  hf = hf_longformer(attention_window=4)
  c = our_config()
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  params = weights.convert(hf.state_dict(), abstract, models.family(c.model).converters,
                           hf_config=hf.config.to_dict())
  assert list(params) == ["temporal"] and "cls_token" not in params["temporal"]
  alone = weights.convert(hf.state_dict(), abstract.temporal, (vtn_weights.LONGFORMER,))
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  a, b = flat(params["temporal"]), flat(alone)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])

def test_longformer_settings_name_the_vtn_fields_or_refuse():
  hf = hf_longformer(attention_window=6)  # 3 frames each side; the config's window is 2
  c = our_config()
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  config = {**hf.config.to_dict(), "max_position_embeddings": 4098}
  with pytest.raises(ValueError) as refused:
    weights.convert(hf.state_dict(), abstract, models.family(c.model).converters,
                    hf_config=config)
  message = str(refused.value)
  assert ("attention_window=(6, 6): the model has window=2 (each side); set "
          "--config.model.vtn.window=3") in message
  assert "max_position_embeddings=4098: our VTN's position table has 288 rows" in message


def test_image_vit_settings_are_read_against_the_one_frame_model():
  hf = hf_vit()
  c = our_config()
  for field, value, expected in (
      ("qkv_bias", False, r"qkv_bias=False: our one-frame VideoViT has q, k and v biases"),
      ("patch_size", 4, r"patch_size=4: the model has 8; set "
                        r"--config\.model\.patch_size='\(t, 4, 4\)'"),
      ("hidden_act", "relu", r"hidden_act='relu': our VideoViT blocks use exact GELU")):
    with pytest.raises(ValueError, match=expected):
      image.convert(hf.state_dict(), c.model, models.FAMILIES["vtn"].image_model,
                    hf_config={**hf.config.to_dict(), field: value})


def with_params(abstract, params):
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def video(frames, seed=0):
  """The same clip for both: torch [B, T, C, H, W] and ours [B, T, H, W, C]."""
  clip = np.random.default_rng(seed).standard_normal((BATCH, frames, 3, SIZE, SIZE))
  clip = clip.astype(np.float32)
  return torch.from_numpy(clip), jnp.asarray(clip.transpose(0, 1, 3, 4, 2))


def test_backbone_gives_hf_vit_cls_features_per_frame():
  hf = hf_vit()
  c = our_config()
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  one_frame = image.convert(hf.state_dict(), c.model,  # a ViTModel: no head
                            models.FAMILIES["vtn"].image_model, hf_config=hf.config.to_dict())
  assert set(one_frame) == {"encoder", "norm"}
  # The rest (temporal encoder, head) plays no part in the frame features.
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  params.update(one_frame)
  model = with_params(abstract, params)
  torch_clip, clip = video(5)
  with torch.no_grad():
    expected = hf(pixel_values=torch_clip.reshape(-1, 3, SIZE, SIZE)).last_hidden_state[:, 0]
  features = nnx.jit(lambda m, v: m.frame_features(v))(model, clip)
  assert_close(features, expected.reshape(BATCH, 5, WIDTH).numpy())


def timm_names(hf_vit_state):
  """timm's VisionTransformer names for an HF ViTModel state dict (q, k, v fused), written out
  from timm's vision_transformer.py independently of the converter."""
  out = {}
  renames = [("embeddings.patch_embeddings.projection", "patch_embed.proj"),
             ("embeddings.cls_token", "cls_token"),
             ("embeddings.position_embeddings", "pos_embed"), ("encoder.layer.", "blocks."),
             (".attention.output.dense", ".attn.proj"), (".layernorm_before", ".norm1"),
             (".layernorm_after", ".norm2"), (".intermediate.dense", ".mlp.fc1"),
             (".output.dense", ".mlp.fc2"), ("layernorm", "norm")]
  for key, value in hf_vit_state.items():
    if ".attention.attention." in key:
      continue
    for theirs, timm in renames:
      key = key.replace(theirs, timm)
    out[key] = value
  for i in range(DEPTH):
    for kind in ("weight", "bias"):
      out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([
          hf_vit_state[f"encoder.layer.{i}.attention.attention.{part}.{kind}"]
          for part in ("query", "key", "value")])
  return out


def test_pyslowfast_vtn_checkpoint_gives_the_reference_logits():
  frames = 9  # the config's clips have 6: VTN takes any number
  vit_model, longformer = hf_vit(), hf_longformer(attention_window=4)
  torch.manual_seed(0)
  cls = torch.randn(1, 1, WIDTH)
  head = randomise(torch.nn.Sequential(
      torch.nn.LayerNorm(WIDTH), torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(),
      torch.nn.Dropout(0.5), torch.nn.Linear(WIDTH, CLASSES)), seed=2)
  # As PySlowFast saves VTN (its Longformer has no word embeddings and no pooler).
  state = {f"backbone.{k}": v for k, v in timm_names(vit_model.state_dict()).items()}
  state.update({f"temporal_encoder.{k}": v for k, v in longformer.state_dict().items()
                if not k.startswith("embeddings.word_embeddings")})
  state["cls_token"] = cls
  state.update({f"mlp_head.{k}": v for k, v in head.state_dict().items()})
  c = our_config()
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == sum(
      v.numel() for k, v in state.items() if "position_ids" not in k)
  model = with_params(abstract, weights.convert({"model_state": state}, abstract,
                                                (vtn_weights.PYSLOWFAST,)))

  torch_clip, clip = video(frames)
  positions = torch.arange(frames) * c.data.frame_stride
  with torch.no_grad():
    features = vit_model(pixel_values=torch_clip.reshape(-1, 3, SIZE, SIZE)).last_hidden_state
    tokens = reference_temporal(longformer, cls, features[:, 0].reshape(BATCH, frames, WIDTH),
                                positions)
    expected = head(tokens[:, 0]).numpy()
  assert_close(nnx.jit(lambda m, v: m(v)[0])(model, clip), expected)


def test_a_checkpoint_of_another_model_is_named():
  c = our_config()
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  with pytest.raises(ValueError, match="unrecognised checkpoint layout for VTN.*init_from"):
    weights.convert(hf_vit().state_dict(), abstract, models.family(c.model).converters)
