"""Randomly initialised PyTorch VideoMAE models, converted into ours, compute the same thing.

HF transformers' VideoMAE is the reference: its classifier's logits, its pre-training
reconstruction and loss must match ours to 1e-4. The official VideoMAE and MAR `.pth` layouts
are built here by renaming the HF state dict (the naming written out independently of the
converter) and must convert to the same parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.videomae import modeling_videomae  # noqa: E402

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers  # noqa: E402
from vidtx.weights import files, videomae  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, FRAMES, SIZE, TUBELET, PATCH = 2, 4, 32, 2, 8
WIDTH, DEPTH, HEADS = 64, 2, 4
DECODER_WIDTH, DECODER_DEPTH, DECODER_HEADS = 32, 1, 2
CLASSES = 5
NUM_TOKENS = (FRAMES // TUBELET) * (SIZE // PATCH) ** 2  # 32
NUM_MASKED = 24
LN_EPS = 1e-6  # official VideoMAE's and ours


def hf_config(**kw):
  args = dict(image_size=SIZE, patch_size=PATCH, num_channels=3, num_frames=FRAMES,
              tubelet_size=TUBELET, hidden_size=WIDTH, num_hidden_layers=DEPTH,
              num_attention_heads=HEADS, intermediate_size=4 * WIDTH, qkv_bias=True,
              decoder_hidden_size=DECODER_WIDTH, decoder_num_hidden_layers=DECODER_DEPTH,
              decoder_num_attention_heads=DECODER_HEADS,
              decoder_intermediate_size=4 * DECODER_WIDTH,
              num_labels=CLASSES, layer_norm_eps=LN_EPS, hidden_act="gelu",
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  args.update(kw)
  return transformers.VideoMAEConfig(**args)


def hf_classifier(seed=0, use_mean_pooling=True, **kw):
  model = transformers.VideoMAEForVideoClassification(
      hf_config(use_mean_pooling=use_mean_pooling, **kw))
  if use_mean_pooling:
    # HF builds fc_norm with torch's default eps (1e-5); official VideoMAE and ours use 1e-6.
    model.fc_norm.eps = LN_EPS
  return randomise(model, seed)


def hf_pretrainer(seed=1):
  model = transformers.VideoMAEForPreTraining(hf_config(use_mean_pooling=False,
                                                        norm_pix_loss=True))
  model.decoder.norm.eps = LN_EPS  # HF: torch's default 1e-5, as for fc_norm
  return randomise(model, seed)


def our_config(name, classifier="none", pool="mean"):
  c = configuration.base()
  c.model.name, c.model.size = name, "Ti"
  c.model.width, c.model.depth, c.model.num_heads = WIDTH, DEPTH, HEADS
  c.model.patch_size = (TUBELET, PATCH, PATCH)
  c.model.mae.decoder_width, c.model.mae.decoder_depth = DECODER_WIDTH, DECODER_DEPTH
  c.model.mae.decoder_heads = DECODER_HEADS
  c.model.mae.classifier = classifier
  c.model.vit.pool = pool
  c.model.mae.bridge_width, c.model.mae.bridge_depth, c.model.mae.bridge_heads = 32, 1, 2
  c.data.num_frames, c.data.crop_size, c.data.num_classes = FRAMES, SIZE, CLASSES
  # HF un-normalises its pre-training targets with the ImageNet statistics.
  c.data.mean, c.data.std = modeling_videomae.IMAGENET_DEFAULT_MEAN, \
      modeling_videomae.IMAGENET_DEFAULT_STD
  return c


def build(config):
  """Our model, abstract: converting needs only the shapes (and skips a slow eager init)."""
  return nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))


def convert(state_dict, model, hf_config=None):
  """Our parameters of `model` from a checkpoint in one of the VideoMAE-family layouts."""
  return weights.convert(state_dict, model, videomae.SOURCES, hf_config=hf_config)


def with_params(abstract_model, params):
  """A real model from an abstract one and converted parameters."""
  graphdef, state = nnx.split(abstract_model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def torch_state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def videos(seed=0):
  """The same clip for both: HF's [B, T, C, H, W] and ours [B, T, H, W, C]."""
  clip = np.random.default_rng(seed).standard_normal((BATCH, FRAMES, 3, SIZE, SIZE))
  clip = clip.astype(np.float32)
  return torch.from_numpy(clip), jnp.asarray(clip.transpose(0, 1, 3, 4, 2))


def random_mask(seed=0):
  """HF's bool_masked_pos [B, N] (True = masked, the same count per clip) and our keep [B, K]."""
  rng = np.random.default_rng(seed)
  masked = np.zeros((BATCH, NUM_TOKENS), bool)
  for row in masked:
    row[rng.permutation(NUM_TOKENS)[:NUM_MASKED]] = True
  keep = np.stack([np.flatnonzero(~row) for row in masked])
  return torch.from_numpy(masked), jnp.asarray(keep)


def report(what, ours, theirs):
  """Prints the largest difference relative to the output's scale and element-wise (over the
  elements not near zero), for the record; the asserts use assert_allclose."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  diff = np.abs(ours - theirs)
  large = np.abs(theirs) > 1e-3 * np.abs(theirs).max()
  scale_relative = diff.max() / np.abs(theirs).max()
  element_relative = np.max(diff[large] / np.abs(theirs[large]))
  print(f"{what}: max |diff| / max |ref| = {scale_relative:.1e}, max element-wise relative "
        f"(|ref| > 1e-3 max) = {element_relative:.1e}")


def param_count(torch_model):
  return sum(p.numel() for p in torch_model.parameters())


def flat(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_params(a, b):
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---- The official VideoMAE naming, written from modeling_finetune.py / modeling_pretrain.py ----

def official_block(hf_block_prefix, state, block_prefix):
  """One official block's entries from a HF block's (q/k/v fused row-wise into qkv)."""
  get = lambda name: state[f"{hf_block_prefix}.{name}"]
  block = {
      f"{block_prefix}.attn.qkv.weight": np.concatenate(
          [get(f"attention.attention.{n}.weight") for n in ("query", "key", "value")]),
      f"{block_prefix}.attn.q_bias": get("attention.attention.q_bias"),
      f"{block_prefix}.attn.v_bias": get("attention.attention.v_bias"),
  }
  for theirs, official in (("attention.output.dense", "attn.proj"),
                           ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                           ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")):
    for kind in ("weight", "bias"):
      block[f"{block_prefix}.{official}.{kind}"] = get(f"{theirs}.{kind}")
  return block


def official_encoder(state, prefix):
  out = {f"{prefix}patch_embed.proj.{kind}":
         state[f"videomae.embeddings.patch_embeddings.projection.{kind}"]
         for kind in ("weight", "bias")}
  for i in range(DEPTH):
    out.update(official_block(f"videomae.encoder.layer.{i}", state, f"{prefix}blocks.{i}"))
  return out


def official_finetune(state):
  """modeling_finetune.VisionTransformer(use_mean_pooling=True)'s state dict."""
  out = official_encoder(state, "")
  for kind in ("weight", "bias"):
    out[f"fc_norm.{kind}"] = state[f"fc_norm.{kind}"]
    out[f"head.{kind}"] = state[f"classifier.{kind}"]
  return out


def official_pretrain(state, encoder_prefix="encoder."):
  """modeling_pretrain.PretrainVisionTransformer's state dict (MAR: encoder_prefix='backbone.')."""
  out = official_encoder(state, encoder_prefix)
  for kind in ("weight", "bias"):
    out[f"{encoder_prefix}norm.{kind}"] = state[f"videomae.layernorm.{kind}"]
    out[f"decoder.norm.{kind}"] = state[f"decoder.norm.{kind}"]
    out[f"decoder.head.{kind}"] = state[f"decoder.head.{kind}"]
  out["encoder_to_decoder.weight"] = state["encoder_to_decoder.weight"]
  out["mask_token"] = state["mask_token"]
  for i in range(DECODER_DEPTH):
    out.update(official_block(f"decoder.decoder_layers.{i}", state, f"decoder.blocks.{i}"))
  return out


# ---- HF parity ----

def assert_logits_match_hf(hf, pool="mean", what="classifier logits"):
  abstract = build(our_config("vit", pool=pool))
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == param_count(hf)
  model = with_params(abstract, convert(hf.state_dict(), abstract, hf.config.to_dict()))

  torch_video, video = videos()
  with torch.no_grad():
    expected = hf(pixel_values=torch_video).logits.numpy()
  logits = nnx.jit(lambda model, video: model(video)[0])(model, video)
  report(what, logits, expected)
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_classifier_logits_match_hf():
  assert_logits_match_hf(hf_classifier())


def test_classifier_without_mean_pooling_matches_hf():
  """use_mean_pooling=False: the encoder's final LayerNorm on every token, then the first token
  (VideoMAE has no CLS token) -> classifier; ours with config.model.vit.pool='first'."""
  hf = hf_classifier(use_mean_pooling=False)
  assert hf.fc_norm is None and hf.videomae.layernorm is not None
  assert_logits_match_hf(hf, pool="first", what="first-token classifier logits")


def test_pooling_that_does_not_fit_the_checkpoint_names_the_pool():
  first_token = hf_classifier(use_mean_pooling=False)
  with pytest.raises(ValueError, match=r"use_mean_pooling=False: the model has 'mean'; set "
                                       r"--config\.model\.vit\.pool='first'"):
    convert(first_token.state_dict(), build(our_config("vit")), first_token.config.to_dict())
  # Without config.json the layout says it too.
  with pytest.raises(ValueError, match=r"(?s)not used.*videomae\.layernorm\.weight.*hint: .*"
                                       r"config\.model\.vit\.pool='first'"):
    convert(first_token.state_dict(), build(our_config("vit")))
  mean = hf_classifier()
  with pytest.raises(ValueError, match=r"use_mean_pooling=True: the model has 'first'; set "
                                       r"--config\.model\.vit\.pool='mean'"):
    convert(mean.state_dict(), build(our_config("vit", pool="first")), mean.config.to_dict())
  with pytest.raises(ValueError, match=r"(?s)not used.*fc_norm\.weight.*hint: .*"
                                       r"config\.model\.vit\.pool='mean'"):
    convert(mean.state_dict(), build(our_config("vit", pool="first")))


def test_official_first_token_checkpoint_converts_like_hf():
  """Official VideoMAE with use_mean_pooling=False saves the final norm as `norm` (no
  fc_norm)."""
  hf = hf_classifier(use_mean_pooling=False)
  model = build(our_config("vit", pool="first"))
  state = official_encoder(torch_state(hf), "")
  for kind in ("weight", "bias"):
    state[f"norm.{kind}"] = torch_state(hf)[f"videomae.layernorm.{kind}"]
    state[f"head.{kind}"] = torch_state(hf)[f"classifier.{kind}"]
  assert_same_params(convert(state, model), convert(hf.state_dict(), model))


def test_hf_layer_norm_eps_default_converts_within_the_parity_tolerance():
  """HF's VideoMAEConfig default eps is 1e-12 (the checkpoints on the hub keep it); ours is
  VideoMAE's 1e-6. The difference is far below the parity tolerance, so it converts."""
  hf = hf_classifier(layer_norm_eps=1e-12)
  assert_logits_match_hf(hf, what="classifier logits, HF eps 1e-12")


def test_settings_that_change_the_computation_are_refused_by_name():
  hf = hf_classifier(hidden_act="gelu_new", layer_norm_eps=1e-3)
  with pytest.raises(ValueError) as refused:
    convert(hf.state_dict(), build(our_config("vit")), hf.config.to_dict())
  message = str(refused.value)
  assert ("hidden_act='gelu_new' (the tanh approximation of GELU): our VideoViT blocks use exact "
          "GELU; this checkpoint cannot be converted exactly") in message
  assert "layer_norm_eps=0.001: our VideoViT LayerNorms use eps 1e-06" in message


def test_sizes_and_clip_shape_name_the_config_fields():
  hf = hf_classifier()
  config = our_config("vit")
  config.model.depth, config.model.mlp_ratio = 3, 2.0
  config.data.crop_size, config.data.num_classes = 2 * SIZE, 7
  with pytest.raises(ValueError) as refused:
    convert(hf.state_dict(), build(config), hf.config.to_dict())
  message = str(refused.value)
  for line in (f"num_hidden_layers={DEPTH}: the model has 3; set --config.model.depth={DEPTH}",
               f"intermediate_size={4 * WIDTH}: the model has {2 * WIDTH}; set "
               "--config.model.mlp_ratio=4.0",
               f"image_size={SIZE}: the model has {2 * SIZE}; set --config.data.crop_size={SIZE}",
               f"id2label ({CLASSES} labels): the model has 7 classes; set "
               f"--config.data.num_classes={CLASSES}"):
    assert line in message


def test_pretraining_settings_name_the_decoder_fields_and_refuse_pixel_targets():
  hf = hf_pretrainer()
  config = our_config("mae")
  config.model.mae.decoder_depth = 2
  with pytest.raises(ValueError, match=rf"decoder_num_hidden_layers={DECODER_DEPTH}: the model "
                                       rf"has 2; set --config\.model\.mae\.decoder_depth="
                                       rf"{DECODER_DEPTH}"):
    convert(hf.state_dict(), build(config), hf.config.to_dict())
  unnormalised = {**hf.config.to_dict(), "norm_pix_loss": False}
  with pytest.raises(ValueError, match=r"norm_pix_loss=False: our MaskedVideoModel reconstructs "
                                       r"per-tubelet normalised pixels"):
    convert(hf.state_dict(), build(our_config("mae")), unnormalised)
  mean_pooled = {**hf.config.to_dict(), "use_mean_pooling": True}
  with pytest.raises(ValueError, match=r"use_mean_pooling=True: .*no final encoder LayerNorm"):
    convert(hf.state_dict(), build(our_config("mae")), mean_pooled)


def test_pretraining_reconstruction_and_loss_match_hf():
  hf = hf_pretrainer()
  abstract = build(our_config("mae"))
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == param_count(hf)
  model = with_params(abstract, convert(hf.state_dict(), abstract, hf.config.to_dict()))

  torch_video, video = videos(1)
  bool_masked_pos, keep = random_mask(1)
  assert not np.array_equal(keep[0], keep[1])  # different masks per clip: order matters
  with torch.no_grad():
    out = hf(pixel_values=torch_video, bool_masked_pos=bool_masked_pos)

  @nnx.jit
  def forward(model, video, keep):
    tokens = model.norm(model.encoder(video, keep=keep))
    _, aux = model(video, keep=keep)
    return model.reconstruct(tokens, keep), aux["recon_mse"]

  pixels, recon_mse = forward(model, video, keep)  # masked tubelets in increasing token order
  assert pixels.shape == out.logits.shape == (BATCH, NUM_MASKED, TUBELET * PATCH * PATCH * 3)
  report("reconstructed pixels", pixels, out.logits)
  np.testing.assert_allclose(pixels, out.logits.numpy(), rtol=1e-4, atol=1e-5)

  loss = float(recon_mse.mean())  # the same number of masked tokens per clip
  print(f"loss: ours {loss:.6f}, HF {out.loss.item():.6f}")
  np.testing.assert_allclose(loss, out.loss.item(), rtol=1e-4)


# ---- Official VideoMAE and MAR layouts ----

def test_official_finetune_pth_converts_like_hf(tmp_path):
  hf = hf_classifier()
  model = build(our_config("vit"))
  from_hf = convert(hf.state_dict(), model)
  official = {k: torch.from_numpy(v) for k, v in official_finetune(torch_state(hf)).items()}
  path = tmp_path / "checkpoint-best.pth"
  torch.save({"module": official, "epoch": 3}, path)  # released fine-tuned files wrap it
  assert_same_params(convert(files.load_state_dict(str(path)), model), from_hf)


def test_official_pretrain_pth_converts_like_hf(tmp_path):
  hf = hf_pretrainer()
  model = build(our_config("mae"))
  from_hf = convert(hf.state_dict(), model)
  official = {k: torch.from_numpy(v) for k, v in official_pretrain(torch_state(hf)).items()}
  path = tmp_path / "checkpoint.pth"
  torch.save({"model": official, "epoch": 799}, path)
  assert_same_params(convert(files.load_state_dict(str(path)), model), from_hf)


def mar_state(hf, seed=2):
  """A MAR model's state dict: the HF pre-training weights renamed, plus a random bridging
  classifier and MAR's saved extras (data statistics, decoder sinusoid table)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.2
  state = official_pretrain(torch_state(hf), encoder_prefix="backbone.")
  bridge = 32
  state["encoder_to_cls_decoder.weight"] = normal(bridge, WIDTH)
  prefix = "cls_head.blocks.0"
  state.update({
      f"{prefix}.norm.weight": 1 + normal(bridge), f"{prefix}.norm.bias": normal(bridge),
      f"{prefix}.attn.to_qkv.weight": normal(3 * bridge, bridge) * 5,
      f"{prefix}.attn.to_qkv.bias": normal(3 * bridge),  # k part non-zero: it must cancel
      f"{prefix}.attn.proj.weight": normal(bridge, bridge), f"{prefix}.attn.proj.bias":
          normal(bridge),
      f"{prefix}.norm_ffn.weight": 1 + normal(bridge), f"{prefix}.norm_ffn.bias": normal(bridge),
      f"{prefix}.ffn.net.0.weight": normal(4 * bridge, bridge),
      f"{prefix}.ffn.net.0.bias": normal(4 * bridge),
      f"{prefix}.ffn.net.3.weight": normal(bridge, 4 * bridge),
      f"{prefix}.ffn.net.3.bias": normal(bridge),
      "cls_head.norm.weight": 1 + normal(bridge), "cls_head.norm.bias": normal(bridge),
      "cls_head.head.weight": normal(CLASSES, bridge), "cls_head.head.bias": normal(CLASSES),
      "cls_head.mask_token": normal(1, 1, bridge),
      "mean": np.asarray(modeling_videomae.IMAGENET_DEFAULT_MEAN, np.float32)[None, :, None,
                                                                               None, None],
      "std": np.asarray(modeling_videomae.IMAGENET_DEFAULT_STD, np.float32)[None, :, None,
                                                                             None, None],
      "pos_embed": modeling_videomae.get_sinusoid_encoding_table(NUM_TOKENS,
                                                                 DECODER_WIDTH).numpy(),
  })
  return state


def mar_classifier_reference(state, tokens, heads=2):
  """MAR's encoder_to_cls_decoder + TransformerBridgingClsHead forward, in torch."""
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
  linear = torch.nn.functional.linear
  norm = lambda x, name: torch.nn.functional.layer_norm(x, x.shape[-1:], t[f"{name}.weight"],
                                                        t[f"{name}.bias"], eps=1e-6)
  x = linear(torch.from_numpy(np.array(tokens)), t["encoder_to_cls_decoder.weight"])
  b, n, d = x.shape
  p = "cls_head.blocks.0"
  qkv = linear(norm(x, f"{p}.norm"), t[f"{p}.attn.to_qkv.weight"], t[f"{p}.attn.to_qkv.bias"])
  q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
  attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
  out = (attn @ v).transpose(1, 2).reshape(b, n, d)
  x = x + linear(out, t[f"{p}.attn.proj.weight"], t[f"{p}.attn.proj.bias"])
  hidden = torch.nn.functional.gelu(linear(norm(x, f"{p}.norm_ffn"), t[f"{p}.ffn.net.0.weight"],
                                           t[f"{p}.ffn.net.0.bias"]))
  x = x + linear(hidden, t[f"{p}.ffn.net.3.weight"], t[f"{p}.ffn.net.3.bias"])
  return linear(norm(x.mean(1), "cls_head.norm"), t["cls_head.head.weight"],
                t["cls_head.head.bias"]).numpy()


def test_mar_checkpoint_fills_the_bridging_classifier():
  hf = hf_pretrainer()
  state = mar_state(hf)
  abstract = build(our_config("mae", classifier="bridge"))
  params = convert({"model_state": state, "epoch": 1}, abstract)
  # Every parameter is filled (convert raises otherwise) and the shared parts are HF's.
  pretrain = convert(hf.state_dict(), build(our_config("mae")))
  assert_same_params({k: v for k, v in params.items() if k != "classifier"}, pretrain)
  bridge = params["classifier"]
  attn = bridge["blocks"][0]["attn"]
  to_qkv_bias = state["cls_head.blocks.0.attn.to_qkv.bias"]
  np.testing.assert_array_equal(attn["q_bias"], to_qkv_bias[:32])
  np.testing.assert_array_equal(attn["v_bias"], to_qkv_bias[64:])
  np.testing.assert_array_equal(attn["qkv"][:, 1].reshape(32, 32),
                                state["cls_head.blocks.0.attn.to_qkv.weight"][32:64].T)
  np.testing.assert_array_equal(bridge["proj"]["kernel"], state["encoder_to_cls_decoder.weight"].T)

  # And the classifier computes MAR's logits, the dropped k bias included.
  model = with_params(abstract, params)
  _, video = videos(2)
  _, keep = random_mask(2)
  tokens = nnx.jit(lambda model, video, keep: model.norm(model.encoder(video, keep=keep)))(
      model, video, keep)
  expected = mar_classifier_reference(state, tokens)
  logits = nnx.jit(lambda model, tokens: model.classifier(tokens))(model, tokens)
  report("MAR bridging classifier logits", logits, expected)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_mar_statistics_must_match_the_config():
  state = mar_state(hf_pretrainer())
  state["std"] = np.full((1, 3, 1, 1, 1), 0.5, np.float32)
  with pytest.raises(ValueError, match=r"data std.*config\.data\.std"):
    convert(state, build(our_config("mae", classifier="bridge")))


def test_saved_position_embeddings():
  """A learned table fills a learned model; a saved sinusoid table is checked and consumed."""
  state = official_finetune(torch_state(hf_classifier()))
  learned = np.random.default_rng(0).standard_normal((1, NUM_TOKENS, WIDTH)).astype(np.float32)
  config = our_config("vit")
  config.model.vit.pos_embed = "learned"
  params = convert({**state, "pos_embed": learned}, build(config))
  np.testing.assert_array_equal(params["encoder"]["pos_embed"]["embedding"], learned[0])

  sincos = modeling_videomae.get_sinusoid_encoding_table(NUM_TOKENS, WIDTH).numpy()
  convert({**state, "pos_embed": sincos}, build(our_config("vit")))
  with pytest.raises(ValueError, match=r"encoder/pos_embed: checkpoint pos_embed .* is not the "
                                       r"fixed sinusoid table.*pos_embed='learned'"):
    convert({**state, "pos_embed": learned}, build(our_config("vit")))


# ---- Errors ----

def official_classifier_state():
  return official_finetune(torch_state(hf_classifier()))


def test_unknown_key_is_named():
  state = official_classifier_state()
  state["blocks.0.attn.relative_position_bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"not used \(1\):\n +blocks\.0\.attn\.relative_position"):
    convert(state, build(our_config("vit")))


def test_missing_key_is_named():
  state = official_classifier_state()
  del state["blocks.1.mlp.fc2.bias"]
  with pytest.raises(ValueError, match=r"encoder/blocks/1/mlp/fc2/bias \(64,\): the checkpoint "
                                       r"has no blocks\.1\.mlp\.fc2\.bias"):
    convert(state, build(our_config("vit")))


def test_shape_mismatch_names_parameter_and_both_shapes():
  state = official_classifier_state()
  config = our_config("vit")
  config.data.num_classes = 7
  with pytest.raises(ValueError, match=r"head/kernel \(64, 7\): checkpoint head\.weight has "
                                       r"shape \(5, 64\), the model needs \(7, 64\)"):
    convert(state, build(config))


def test_deeper_model_than_checkpoint_lists_the_missing_block():
  config = our_config("vit")
  config.model.depth = 3
  with pytest.raises(ValueError, match=r"encoder/blocks/2/attn/qkv .*blocks\.2\.attn\.qkv"):
    convert(official_classifier_state(), build(config))


def test_pretraining_checkpoint_into_classifier_says_how():
  hf = hf_pretrainer()
  with pytest.raises(ValueError, match=r"(?s)not used.*decoder\.norm\.weight.*hint: this is a "
                                       r"pre-training checkpoint"):
    convert(hf.state_dict(), build(our_config("vit")))


def test_unrecognised_layout():
  with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
    convert({"conv1.weight": np.zeros((2, 2))}, build(our_config("vit")))
