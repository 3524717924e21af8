"""Randomly initialised HF TimeSformer models, converted into ours, compute the same logits.

HF transformers' `TimesformerForVideoClassification` (a port of facebookresearch/TimeSformer) is
the reference for divided and joint space-time attention. For space_only, HF classifies every
frame apart (its logits are [B T, classes]) where the reference averages the frames' tokens
before the final LayerNorm; the reference's forward is rebuilt from HF's modules for that one.
The official checkpoint naming is built here by renaming the HF state dict (written out from
`timesformer/models/vit.py`, independently of the converter) and must convert the same.
LayerNorm eps is 1e-6 in the reference, in HF's config default and in ours.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers  # noqa: E402
from vidtx.weights import timesformer  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, FRAMES, SIZE, PATCH = 2, 4, 32, 8
WIDTH, DEPTH, HEADS, CLASSES = 64, 2, 4, 5
HF_ATTENTION = {"divided": "divided_space_time", "joint": "joint_space_time",
                "space_only": "space_only"}


def hf_model(attention, seed=0, **kw):
  config = transformers.TimesformerConfig(**{
      **dict(image_size=SIZE, patch_size=PATCH, num_channels=3, num_frames=FRAMES,
             hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
             intermediate_size=4 * WIDTH, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
             num_labels=CLASSES, attention_type=HF_ATTENTION[attention]), **kw})
  model = transformers.TimesformerForVideoClassification(config)
  return randomise(model, seed)  # temporal_dense too, which we start at zero


def our_config(attention):
  c = configuration.base()
  c.model.name, c.model.attention, c.model.size = "timesformer", attention, "Ti"
  c.model.width, c.model.depth, c.model.num_heads = WIDTH, DEPTH, HEADS
  c.model.patch_size = (1, PATCH, PATCH)
  c.data.num_frames, c.data.crop_size, c.data.num_classes = FRAMES, SIZE, CLASSES
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def abstract_model(attention):
  """Our model, built abstractly: converting needs only the shapes."""
  config = our_config(attention)
  return nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))


def converted(hf, attention):
  """Our model with `hf`'s weights, its config.json's settings checked."""
  abstract = abstract_model(attention)
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == sum(
      p.numel() for p in hf.parameters())
  params = weights.convert(hf.state_dict(), abstract, timesformer.SOURCES,
                           hf_config=hf.config.to_dict())
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state), params


def videos(seed=0):
  """The same clip for both: HF's [B, T, C, H, W] and ours [B, T, H, W, C]."""
  clip = np.random.default_rng(seed).standard_normal((BATCH, FRAMES, 3, SIZE, SIZE))
  clip = clip.astype(np.float32)
  return torch.from_numpy(clip), jnp.asarray(clip.transpose(0, 1, 3, 4, 2))


def reference_logits(hf, attention, torch_video):
  with torch.no_grad():
    if attention != "space_only":
      return hf(pixel_values=torch_video).logits.numpy()
    # The reference's space_only forward_features: frames through the blocks apart, their
    # tokens averaged, then the final LN and the CLS token's logits.
    tokens = hf.timesformer.encoder(hf.timesformer.embeddings(torch_video)).last_hidden_state
    tokens = tokens.reshape(BATCH, FRAMES, *tokens.shape[1:]).mean(1)
    return hf.classifier(hf.timesformer.layernorm(tokens)[:, 0]).numpy()


@pytest.mark.parametrize("attention", ["divided", "joint", "space_only"])
def test_logits_match_hf(attention):
  hf = hf_model(attention)
  model, _ = converted(hf, attention)
  torch_video, video = videos()
  expected = reference_logits(hf, attention, torch_video)
  logits = nnx.jit(lambda model, video: model(video)[0])(model, video)
  diff = np.abs(logits - expected).max() / np.abs(expected).max()
  print(f"{attention}: max |diff| / max |ref| = {diff:.1e}")
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_space_only_differs_from_averaging_hf_per_frame_logits():
  """Why space_only is checked against the rebuilt reference: HF's per-frame logits, averaged,
  are not the reference's (its LN comes after the frame average)."""
  hf = hf_model("space_only")
  torch_video, _ = videos()
  with torch.no_grad():
    per_frame = hf(pixel_values=torch_video).logits.numpy()
  assert per_frame.shape == (BATCH * FRAMES, CLASSES)
  averaged = per_frame.reshape(BATCH, FRAMES, CLASSES).mean(1)
  assert not np.allclose(averaged, reference_logits(hf, "space_only", torch_video), atol=1e-3)


def official_state(hf_state):
  """facebookresearch/TimeSformer's names for a HF state dict, as its trainer saves them."""
  renames = [("timesformer.embeddings.patch_embeddings.projection", "model.patch_embed.proj"),
             ("timesformer.embeddings.cls_token", "model.cls_token"),
             ("timesformer.embeddings.position_embeddings", "model.vit.pos_embed"),
             ("timesformer.embeddings.time_embeddings", "model.time_embed"),
             ("timesformer.encoder.layer.", "model.blocks."),
             (".temporal_attention.attention.qkv", ".temporal_attn.qkv"),
             (".temporal_attention.output.dense", ".temporal_attn.proj"),
             (".temporal_layernorm", ".temporal_norm1"), (".temporal_dense", ".temporal_fc"),
             (".attention.attention.qkv", ".attn.qkv"), (".attention.output.dense", ".attn.proj"),
             (".layernorm_before", ".norm1"), (".layernorm_after", ".norm2"),
             (".intermediate.dense", ".mlp.fc1"), (".output.dense", ".mlp.fc2"),
             ("timesformer.layernorm", "model.norm"), ("classifier", "model.head")]
  out = {}
  for key, value in hf_state.items():
    for theirs, official in renames:
      key = key.replace(theirs, official)
    out[key] = value
  return out


def test_official_checkpoint_converts_like_hf():
  hf = hf_model("divided")
  _, from_hf = converted(hf, "divided")
  config = our_config("divided")
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  state = {k: v.numpy() for k, v in official_state(hf.state_dict()).items()}
  assert any(k.startswith("model.blocks.1.temporal_fc") for k in state)
  from_official = weights.convert({"model_state": state, "epoch": 15}, abstract,
                                  timesformer.SOURCES)
  flat = lambda tree: {jax.tree_util.keystr(p): x for p, x in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  a, b = flat(from_hf), flat(from_official)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # The fused qkv bias lands in q, k and v in that order.
  qkv_bias = hf.state_dict()["timesformer.encoder.layer.0.temporal_attention.attention.qkv.bias"]
  attn = from_hf["blocks"][0]["temporal"]["attn"]
  np.testing.assert_array_equal(attn["k_bias"], qkv_bias[WIDTH:2 * WIDTH].numpy())


def test_divided_checkpoint_into_joint_model_names_the_fix():
  hf = hf_model("divided")
  config = our_config("joint")
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"(?s)not used.*temporal_dense.*hint: the checkpoint has "
                                       r"divided space-time attention"):
    weights.convert(hf.state_dict(), abstract, timesformer.SOURCES)


def test_attention_type_names_the_attention_to_set():
  hf = hf_model("joint")
  with pytest.raises(ValueError, match=r"attention_type='joint_space_time': the model has "
                                       r"'divided'; set --config\.model\.attention='joint'"):
    weights.convert(hf.state_dict(), abstract_model("divided"), timesformer.SOURCES,
                    hf_config=hf.config.to_dict())


def test_an_activation_our_blocks_lack_is_refused_by_name():
  hf = hf_model("divided", hidden_act="gelu_new")
  with pytest.raises(ValueError, match=r"hidden_act='gelu_new' \(the tanh approximation of "
                                       r"GELU\): our TimeSformer blocks use exact GELU"):
    weights.convert(hf.state_dict(), abstract_model("divided"), timesformer.SOURCES,
                    hf_config=hf.config.to_dict())
