"""ViViT against independent PyTorch computations.

Model 1: a randomly initialised HF `VivitForVideoClassification` (HF's port of Scenic's model 1),
converted into ours, gives the same logits. HF has no models 2-4, so for all four models this
file also computes ViViT in plain PyTorch from Scenic's `scenic/projects/vivit/model.py`
(`EncoderBlock`, `EncoderFactorizedSelfAttentionBlock` in the paper's space-then-time order,
`factorized_dot_product_attention`, `SpaceTimeViViT`) on our parameters, randomised; model 1's
version is checked against HF too, so the reference's conventions are HF's. LayerNorm eps is
1e-6 in Scenic (Flax's default), in HF's config default and in ours; the MLP's GELU is the tanh
approximation in all three (Flax's default, HF's "gelu_fast").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers  # noqa: E402
from vidtx.weights import files, vivit  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, FRAMES, SIZE, TUBELET, PATCH = 2, 4, 32, 2, 8
WIDTH, DEPTH, HEADS, CLASSES = 64, 2, 4, 5


def our_config(attention):
  c = configuration.base()
  c.model.name, c.model.attention, c.model.size = "vivit", attention, "Ti"
  c.model.width, c.model.depth, c.model.num_heads = WIDTH, DEPTH, HEADS
  c.model.vivit.temporal_depth = 2
  c.model.patch_size = (TUBELET, PATCH, PATCH)
  c.data.num_frames, c.data.crop_size, c.data.num_classes = FRAMES, SIZE, CLASSES
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def abstract_model(attention):
  config = our_config(attention)
  return nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))


def with_params(abstract, params):
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def videos(seed=0):
  """The same clip for both: HF's [B, T, C, H, W] and ours [B, T, H, W, C]."""
  clip = np.random.default_rng(seed).standard_normal((BATCH, FRAMES, 3, SIZE, SIZE))
  clip = clip.astype(np.float32)
  return torch.from_numpy(clip), jnp.asarray(clip.transpose(0, 1, 3, 4, 2))


def logits_of(model, video):
  return np.asarray(nnx.jit(lambda model, video: model(video)[0])(model, video))


def assert_close(what, logits, expected):
  diff = np.abs(logits - expected).max() / np.abs(expected).max()
  print(f"{what}: max |diff| / max |ref| = {diff:.1e}")
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ---- HF, model 1 ----

def hf_model(seed=0, **kw):
  args = dict(
      image_size=SIZE, num_frames=FRAMES, tubelet_size=[TUBELET, PATCH, PATCH], num_channels=3,
      hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
      intermediate_size=4 * WIDTH, hidden_act="gelu_fast", layer_norm_eps=1e-6, qkv_bias=True,
      num_labels=CLASSES)
  model = transformers.VivitForVideoClassification(transformers.VivitConfig(**{**args, **kw}))
  return randomise(model, seed)  # HF zeroes the CLS token and position embeddings


def hf_logits(hf, torch_video):
  with torch.no_grad():
    return hf(pixel_values=torch_video).logits.numpy()


def test_model_1_logits_match_hf(tmp_path):
  hf = hf_model()
  hf.save_pretrained(tmp_path)  # model.safetensors and config.json, its settings checked
  abstract = abstract_model("joint")
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == sum(
      p.numel() for p in hf.parameters())
  params = weights.convert(files.load_state_dict(str(tmp_path)), abstract, vivit.SOURCES,
                           hf_config=files.load_hf_config(str(tmp_path)))
  torch_video, video = videos()
  expected = hf_logits(hf, torch_video)
  assert_close("model 1 vs HF", logits_of(with_params(abstract, params), video), expected)
  # And the reference below agrees with HF.
  assert_close("reference model 1 vs HF", reference(params, video, "joint"), expected)


@pytest.mark.parametrize("tanh_gelu", ["gelu_new", "gelu_pytorch_tanh"])
def test_other_names_of_the_tanh_gelu_convert(tanh_gelu):
  hf = hf_model(hidden_act=tanh_gelu)
  abstract = abstract_model("joint")
  params = weights.convert(hf.state_dict(), abstract, vivit.SOURCES,
                           hf_config=hf.config.to_dict())
  torch_video, video = videos()
  assert_close(tanh_gelu, logits_of(with_params(abstract, params), video),
               hf_logits(hf, torch_video))


def test_exact_gelu_checkpoint_is_refused_by_name():
  """Our ViViT's GELU is the tanh approximation: an HF ViViT with hidden_act="gelu" (exact)
  would convert by names and shapes alone into a model whose logits are not the checkpoint's."""
  hf = hf_model(hidden_act="gelu")
  abstract = abstract_model("joint")
  with pytest.raises(ValueError, match=r"hidden_act='gelu' \(exact GELU\): our ViViT blocks use "
                                       r"the tanh approximation of GELU; this checkpoint cannot "
                                       r"be converted exactly"):
    weights.convert(hf.state_dict(), abstract, vivit.SOURCES, hf_config=hf.config.to_dict())
  # Why: without its config.json the names and shapes fit, and the logits are off by ~1e-4 of
  # their scale, where a true conversion is within ~3e-7.
  params = weights.convert(hf.state_dict(), abstract, vivit.SOURCES)
  torch_video, video = videos()
  expected = hf_logits(hf, torch_video)
  logits = logits_of(with_params(abstract, params), video)
  assert np.abs(logits - expected).max() > 3e-5 * np.abs(expected).max()


def test_settings_the_config_sets_name_the_field():
  hf = hf_model(num_frames=2 * FRAMES, qkv_bias=False, layer_norm_eps=1e-3)
  with pytest.raises(ValueError) as refused:
    weights.convert(hf.state_dict(), abstract_model("joint"), vivit.SOURCES,
                    hf_config=hf.config.to_dict())
  message = str(refused.value)
  assert "HF ViViT checkpoint's config.json does not fit ViViT" in message
  assert f"num_frames={2 * FRAMES}: the model has {FRAMES}; set --config.data.num_frames=8" \
      in message
  assert "qkv_bias=False: the model has True; set --config.model.qkv_bias=False" in message
  assert ("layer_norm_eps=0.001: our ViViT LayerNorms use eps 1e-06; this checkpoint cannot be "
          "converted exactly") in message


def test_hf_checkpoint_into_other_models_says_model_1():
  with pytest.raises(ValueError, match="HF ViViT checkpoints are model 1.*attention='joint'"):
    weights.convert(hf_model().state_dict(), abstract_model("factorised_dot"), vivit.SOURCES)


# ---- Scenic's models in PyTorch ----

def _t(x):
  return torch.from_numpy(np.array(x, np.float32))


def layer_norm(x, p):
  return F.layer_norm(x, x.shape[-1:], _t(p["scale"]), _t(p["bias"]), eps=1e-6)


def qkv(x, p):
  """q, k, v [..., heads, head_dim] (flax DenseGeneral with biases)."""
  q, k, v = torch.einsum("...d,dkhe->k...he", x, _t(p["qkv"]))
  heads, head_dim = p["qkv"].shape[2:]
  bias = lambda name: _t(p[name]).reshape(heads, head_dim)
  return q + bias("q_bias"), k + bias("k_bias"), v + bias("v_bias")


def project(out, p):
  return torch.einsum("...he,hed->...d", out, _t(p["proj"])) + _t(p["proj_bias"])


def softmax_attention(q, k, v):
  """[N, L, heads, head_dim] -> the same: each of the L queries over the L keys."""
  logits = torch.einsum("nqhe,nkhe->nhqk", q, k) / q.shape[-1] ** 0.5
  return torch.einsum("nhqk,nkhe->nqhe", logits.softmax(-1), v)


def self_attention(x, p):
  return project(softmax_attention(*qkv(x, p)), p)


def mlp(x, p):
  hidden = F.gelu(x @ _t(p["fc1"]["kernel"]) + _t(p["fc1"]["bias"]), approximate="tanh")
  return hidden @ _t(p["fc2"]["kernel"]) + _t(p["fc2"]["bias"])


def encoder_block(x, p):
  """Scenic's EncoderBlock on [N, L, D]."""
  x = x + self_attention(layer_norm(x, p["norm1"]), p["attn"])
  return x + mlp(layer_norm(x, p["norm2"]), p["mlp"])


def factorised_self_attention_block(x, p):
  """Scenic's EncoderFactorizedSelfAttentionBlock on [B, T, S, D], space then time."""
  b, t, s, d = x.shape
  y = x.reshape(b * t, s, d)  # within each frame
  y = y + self_attention(layer_norm(y, p["norm1"]), p["attn"])
  y = y.reshape(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)  # over time at each position
  y = y + self_attention(layer_norm(y, p["temporal"]["norm"]), p["temporal"]["attn"])
  x = y.reshape(b, s, t, d).transpose(1, 2)
  return x + mlp(layer_norm(x, p["norm2"]), p["mlp"])


def factorised_dot_product_block(x, p):
  """EncoderBlock with factorized_dot_product_attention on [B, T, S, D]: heads [:H/2] attend
  along T, heads [H/2:] along S."""
  q, k, v = qkv(layer_norm(x, p["norm1"]), p["attn"])  # [B, T, S, heads, head_dim]
  half, scale = q.shape[-2] // 2, q.shape[-1] ** -0.5
  time = torch.einsum("btshe,bushe->bshtu", q[..., :half, :], k[..., :half, :]) * scale
  time = torch.einsum("bshtu,bushe->btshe", time.softmax(-1), v[..., :half, :])
  space = torch.einsum("btshe,btuhe->bthsu", q[..., half:, :], k[..., half:, :]) * scale
  space = torch.einsum("bthsu,btuhe->btshe", space.softmax(-1), v[..., half:, :])
  x = x + project(torch.cat([time, space], dim=-2), p["attn"])
  return x + mlp(layer_norm(x, p["norm2"]), p["mlp"])


def tubelet_tokens(video, p):
  """Conv3d with kernel == stride: [B, T', S, D] tokens of video [B, T, H, W, C]."""
  weight = _t(p["kernel"]).permute(4, 3, 0, 1, 2)  # [kt, kh, kw, C, D] -> [D, C, kt, kh, kw]
  x = F.conv3d(_t(video).permute(0, 4, 1, 2, 3), weight, _t(p["bias"]), stride=weight.shape[2:])
  b, d, t = x.shape[:3]
  return x.reshape(b, d, t, -1).permute(0, 2, 3, 1)


def with_cls(x, cls_token, table):
  """[N, L, D] tokens -> [N, 1 + L, D]: the CLS token first, then the position embedding."""
  cls = _t(cls_token).expand(x.shape[0], 1, -1)
  return torch.cat([cls, x], dim=1) + _t(table)


def reference(params, video, attention):
  """ViViT's logits in PyTorch, after Scenic."""
  encoder = params["encoder"]
  x = tubelet_tokens(video, encoder["patch_embed"])
  b, t, s, d = x.shape
  table = encoder["pos_embed"]["embedding"]
  blocks = [encoder["blocks"][i] for i in sorted(encoder["blocks"])]
  if attention == "joint":  # model 1: CLS + all tokens
    x = with_cls(x.reshape(b, t * s, d), encoder["cls_token"], table)
    for p in blocks:
      x = encoder_block(x, p)
    x = layer_norm(x, params["norm"])[:, 0]
  elif attention == "factorised_encoder":  # model 2
    x = with_cls(x.reshape(b * t, s, d), encoder["cls_token"], table)  # each time slice
    for p in blocks:
      x = encoder_block(x, p)
    x = layer_norm(x, params["norm"])[:, 0].reshape(b, t, d)
    temporal = params["temporal"]
    x = with_cls(x, temporal["cls_token"], temporal["pos_embed"]["embedding"])
    for i in sorted(temporal["blocks"]):
      x = encoder_block(x, temporal["blocks"][i])
    x = layer_norm(x, temporal["norm"])[:, 0]
  else:  # models 3 and 4: no CLS, tokens kept as [B, T, S, D], mean of the normalised tokens
    x = (x.reshape(b, t * s, d) + _t(table)).reshape(b, t, s, d)
    block = {"factorised_self": factorised_self_attention_block,
             "factorised_dot": factorised_dot_product_block}[attention]
    for p in blocks:
      x = block(x, p)
    x = layer_norm(x, params["norm"]).mean(dim=(1, 2))
  return (x @ _t(params["head"]["kernel"]) + _t(params["head"]["bias"])).numpy()


def random_params(abstract, seed):
  """Every parameter random: weights with std 1/sqrt(fan in), norms around 1, the rest 0.2."""
  rng = np.random.default_rng(seed)
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))

  def draw(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if names[-1] in ("kernel", "qkv", "proj"):
      fan_in = {"qkv": leaf.shape[0], "proj": leaf.shape[0] * leaf.shape[1]}.get(
          names[-1], int(np.prod(leaf.shape[:-1])))
      return noise * fan_in ** -0.5
    return noise * 0.2 + (names[-1] == "scale")

  return jax.tree_util.tree_map_with_path(draw, params)


@pytest.mark.parametrize("attention", ["factorised_encoder", "factorised_self", "factorised_dot"])
def test_models_2_to_4_match_the_reference(attention):
  abstract = abstract_model(attention)
  params = random_params(abstract, seed=1)
  _, video = videos(1)
  expected = reference(params, np.asarray(video), attention)
  assert_close(attention, logits_of(with_params(abstract, params), video), expected)
