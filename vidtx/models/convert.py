"""PyTorch weights -> our parameters, with nothing dropped or guessed.

TimeSformer (`TimeSformer`): HF `TimesformerForVideoClassification` (`timesformer.`) or the
official facebookresearch/TimeSformer files (`model.blocks.{i}...`), both through the name
tables TIMESFORMER_NAMES / TIMESFORMER_BLOCK_NAMES. ViViT model 1 (`ViViT`, attention="joint"):
HF `VivitForVideoClassification` (`vivit.`), through VIVIT_HF_NAMES / VIVIT_HF_BLOCK_NAMES.
CLIP's image tower (`clip.CLIPVision`, and the tower inside ILA): HF `CLIPVisionModel`,
`CLIPVisionModelWithProjection` or `CLIPModel` (`vision_model.`), through CLIP_HF_NAMES /
CLIP_HF_BLOCK_NAMES (`convert_clip`). VTN (`vtn.VTN`): the PySlowFast checkpoint (timm ViT
`backbone.`, HF Longformer `temporal_encoder.`) through VTN_NAMES, TIMM_VIT_BLOCK_NAMES and the
LONGFORMER_* tables; an HF `LongformerModel` alone into its temporal encoder
(`convert_longformer`). TPS (`tps.TPS`): an HF image Swin (`SwinForImageClassification`,
`SwinModel`) through SWIN_HF_NAMES, inflated to video (`convert_swin`).

The VideoMAE family has three key layouts, detected from the names:
- "hf": HF transformers `VideoMAEForVideoClassification` / `VideoMAEForPreTraining`
  (`videomae.embeddings...`, `videomae.encoder.layer.{i}...`, `decoder.decoder_layers.{i}...`).
- "videomae": the official MCG-NJU/VideoMAE `.pth` files (`modeling_finetune.py`: `patch_embed`,
  `blocks.{i}`, `fc_norm`, `head`; `modeling_pretrain.py`: the same encoder under `encoder.`, plus
  `encoder_to_decoder`, `mask_token`, `decoder.blocks.{i}`, `decoder.norm`, `decoder.head`).
- "mar": alibaba-mmai-research/Masked-Action-Recognition (the VideoMAE encoder under `backbone.`,
  the VideoMAE decoder, and the bridging classifier `encoder_to_cls_decoder` + `cls_head.*`).

The target model (`VideoViT` or `MaskedVideoModel`, real or `nnx.eval_shape`d) decides which
parts are read. Every checkpoint key must be used and every parameter filled, so a checkpoint
that does not fit the config fails loudly instead of half-loading.

  params = convert(load_state_dict(path), model)  # nested pure dict of float32 numpy arrays
  state = nnx.state(model, nnx.Param); nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)

torch is only imported to read files (`load_state_dict`); `convert` takes numpy arrays or
tensors.
"""

import argparse
import dataclasses
import json
import math
import os
import pickle

import numpy as np
from flax import nnx

from vidtx.models import clip, ila, layers, mae, timesformer, tps, vit, vivit, vtn

# Wrappers of the state dict in released files: official VideoMAE ("model"/"module"), MAR and
# SlowFast-style trainers ("model_state"), generic ("state_dict").
WRAPPER_KEYS = ("model", "module", "model_state", "state_dict")
# How many names an error lists before it only counts the rest.
_MAX_LISTED = 40


def to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy array or a torch tensor (16-bit floats widened to float32)."""
  if hasattr(value, "detach"):  # a torch tensor; torch stays un-imported here
    value = value.detach().cpu()
    if value.dtype.is_floating_point and value.dtype.itemsize < 4:
      value = value.float()  # numpy has no bfloat16
    return value.numpy()
  return np.asarray(value)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each part of the model lives in one naming scheme. Block names take the index."""
  name: str
  patch_embed: str
  pos_embed: str | None  # learned position embedding [1, N, D], if the scheme has one
  blocks: str
  block_style: str  # key of BLOCK_NAMES
  encoder_norm: str  # the final encoder LayerNorm of pre-training models
  fc_norm: str  # LayerNorm on the mean-pooled tokens of classifiers
  head: str
  decoder_blocks: str
  decoder_block_style: str
  decoder_norm: str = "decoder.norm"
  decoder_head: str = "decoder.head"
  encoder_to_decoder: str = "encoder_to_decoder"
  mask_token: str = "mask_token"
  # MAR's bridging classifier (None: the scheme has none).
  bridge_proj: str | None = None
  bridge_blocks: str | None = None
  bridge_norm: str | None = None
  bridge_head: str | None = None


# Per block style: LayerNorms, attention output projection, MLP; the q/k/v layout is separate.
BLOCK_NAMES = {
    "hf": dict(norm1="layernorm_before", norm2="layernorm_after", proj="attention.output.dense",
               fc1="intermediate.dense", fc2="output.dense"),
    "videomae": dict(norm1="norm1", norm2="norm2", proj="attn.proj", fc1="mlp.fc1",
                     fc2="mlp.fc2"),
    "mar_bridge": dict(norm1="norm", norm2="norm_ffn", proj="attn.proj", fc1="ffn.net.0",
                       fc2="ffn.net.3"),
}

HF = Layout(
    name="hf",
    patch_embed="videomae.embeddings.patch_embeddings.projection",
    pos_embed=None,  # HF VideoMAE only has the fixed sinusoid table, which is not saved
    blocks="videomae.encoder.layer.{}", block_style="hf",
    encoder_norm="videomae.layernorm", fc_norm="fc_norm", head="classifier",
    decoder_blocks="decoder.decoder_layers.{}", decoder_block_style="hf")


def videomae_layout(encoder_prefix: str) -> Layout:
  """Official VideoMAE: fine-tuning files have the encoder at the top, pre-training files under
  `encoder.`; the decoder is the same in both."""
  e = encoder_prefix
  return Layout(
      name="videomae", patch_embed=f"{e}patch_embed.proj", pos_embed=f"{e}pos_embed",
      blocks=e + "blocks.{}", block_style="videomae", encoder_norm=f"{e}norm", fc_norm="fc_norm",
      head="head", decoder_blocks="decoder.blocks.{}", decoder_block_style="videomae")


MAR = dataclasses.replace(
    videomae_layout("backbone."), name="mar", bridge_proj="encoder_to_cls_decoder",
    bridge_blocks="cls_head.blocks.{}", bridge_norm="cls_head.norm", bridge_head="cls_head.head")


def strip_wrappers(loaded) -> dict:
  """The state dict inside a loaded file: unwraps {"model": ...}-style wrappers and DDP's
  "module." prefix."""
  state = loaded
  while isinstance(state, dict) and not _looks_like_state_dict(state):
    inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
    if inner is None:
      raise ValueError(f"no state dict in the checkpoint: its top-level keys are "
                       f"{sorted(state)[:10]}; expected parameter names or one of "
                       f"{WRAPPER_KEYS} holding them")
    state = inner
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return dict(state)


def _looks_like_state_dict(d: dict) -> bool:
  return bool(d) and all(hasattr(v, "shape") for v in d.values())


def detect_layout(keys) -> Layout:
  """The naming scheme of a state dict, from its keys."""
  keys = list(keys)
  if any(k.startswith("videomae.") for k in keys):
    return HF
  if any(k.startswith("backbone.") for k in keys):
    return MAR
  if any(k.startswith("encoder.patch_embed.") or k.startswith("encoder.blocks.") for k in keys):
    return videomae_layout("encoder.")
  if any(k.startswith("patch_embed.") or k.startswith("blocks.") for k in keys):
    return videomae_layout("")
  for prefix, name in (("timesformer.", "timesformer"), ("model.blocks.", "timesformer"),
                       ("vivit.", "vivit")):
    if any(k.startswith(prefix) for k in keys):
      raise ValueError(f"this looks like a {name} checkpoint (keys {prefix}...): convert it with "
                       f"config.model.name='{name}'")
  raise ValueError(f"unrecognised checkpoint layout (keys e.g. {sorted(keys)[:5]}): expected "
                   "HF VideoMAE ('videomae.embeddings...'), official VideoMAE ('patch_embed...', "
                   "'blocks.0...' or 'encoder.blocks.0...') or MAR ('backbone.blocks.0...')")


class _Reader:
  """Hands out checkpoint arrays, remembering which were used and why a parameter could not be
  filled, so that one error lists every problem."""

  def __init__(self, state_dict):
    self.arrays = {k: to_numpy(v) for k, v in state_dict.items()}
    self.used = set()
    self.reasons = {}  # our parameter name -> why it is not filled
    self.mismatches = []  # checkpoint entries that carry no parameter but disagree with ours

  def take(self, key: str, shape, *targets: str):
    """The array `key`, which must have `shape` (torch layout) to become `targets`; None if it is
    absent or has another shape (the reason is recorded for each target)."""
    if key not in self.arrays:
      reason = f"the checkpoint has no {key}"
    else:
      self.used.add(key)
      value = self.arrays[key]
      if value.shape == tuple(shape):
        return value.astype(np.float32)
      reason = f"checkpoint {key} has shape {value.shape}, the model needs {tuple(shape)}"
    for target in targets:
      self.reasons.setdefault(target, []).append(reason)
    return None

  def consume(self, key: str):
    """Marks `key` used and returns it (None if absent): for entries that carry no parameter."""
    if key in self.arrays:
      self.used.add(key)
    return self.arrays.get(key)


def _shape(leaf):
  return tuple(leaf.shape)


def _t(x):
  return None if x is None else x.T


def _dense(reader, key, target, path):
  """torch Linear weight [out, in] -> kernel [in, out]; bias as is."""
  d_in, d_out = _shape(target["kernel"])
  out = {"kernel": _t(reader.take(f"{key}.weight", (d_out, d_in), f"{path}/kernel"))}
  if "bias" in target:
    out["bias"] = reader.take(f"{key}.bias", _shape(target["bias"]), f"{path}/bias")
  return out


def _norm(reader, key, target, path):
  """LayerNorm weight -> scale."""
  return {"scale": reader.take(f"{key}.weight", _shape(target["scale"]), f"{path}/scale"),
          "bias": reader.take(f"{key}.bias", _shape(target["bias"]), f"{path}/bias")}


def _patch_embed(reader, key, target, path):
  """Conv3d weight [D, C, kt, kh, kw] -> kernel [kt, kh, kw, C, D]."""
  kt, kh, kw, c, d = _shape(target["kernel"])
  weight = reader.take(f"{key}.weight", (d, c, kt, kh, kw), f"{path}/kernel")
  return {"kernel": None if weight is None else weight.transpose(2, 3, 4, 1, 0),
          "bias": reader.take(f"{key}.bias", _shape(target["bias"]), f"{path}/bias")}


def _qkv_kernel(weight, shape):
  """Fused torch qkv weight [3D, D] (rows q, k, v; each head-major) -> [D, 3, heads, head_dim]."""
  return None if weight is None else weight.T.reshape(shape)


def _attention(reader, style, prefix, target, path):
  """Attention params from one of the three q/k/v layouts."""
  qkv_shape = _shape(target["qkv"])
  dim, _, heads, head_dim = qkv_shape
  inner = heads * head_dim
  out = {}
  if style == "hf":  # separate bias-free query/key/value Linears; q_bias, v_bias beside them
    parts = [reader.take(f"{prefix}.attention.attention.{name}.weight", (inner, dim),
                         f"{path}/qkv") for name in ("query", "key", "value")]
    out["qkv"] = None if any(p is None for p in parts) else _qkv_kernel(
        np.concatenate(parts, axis=0), qkv_shape)
    bias_keys = {"q_bias": f"{prefix}.attention.attention.q_bias",
                 "v_bias": f"{prefix}.attention.attention.v_bias"}
  elif style == "videomae":  # one bias-free qkv Linear; q_bias, v_bias (k has none)
    out["qkv"] = _qkv_kernel(reader.take(f"{prefix}.attn.qkv.weight", (3 * inner, dim),
                                         f"{path}/qkv"), qkv_shape)
    bias_keys = {"q_bias": f"{prefix}.attn.q_bias", "v_bias": f"{prefix}.attn.v_bias"}
  elif style == "mar_bridge":  # one qkv Linear with a full [3D] bias
    out["qkv"] = _qkv_kernel(reader.take(f"{prefix}.attn.to_qkv.weight", (3 * inner, dim),
                                         f"{path}/qkv"), qkv_shape)
    bias_keys = {}
    if "q_bias" in target:
      bias = reader.take(f"{prefix}.attn.to_qkv.bias", (3 * inner,), f"{path}/q_bias",
                         f"{path}/v_bias")
      # Keep the q and v parts. The k part is dropped: it adds q . b_k to every logit of a
      # query's row alike, which the softmax cancels, so the outputs are unchanged.
      out["q_bias"] = None if bias is None else bias[:inner]
      out["v_bias"] = None if bias is None else bias[2 * inner:]
  else:
    raise AssertionError(style)
  for name, key in bias_keys.items():
    if name in target:  # qkv_bias=False models have none; the checkpoint's then stay unused
      out[name] = reader.take(key, _shape(target[name]), f"{path}/{name}")
  proj_key = f"{prefix}.{BLOCK_NAMES[style]['proj']}"
  proj = reader.take(f"{proj_key}.weight", (dim, inner), f"{path}/proj")
  # torch proj weight [D, heads * head_dim] -> [heads, head_dim, D]
  out["proj"] = None if proj is None else proj.T.reshape(_shape(target["proj"]))
  out["proj_bias"] = reader.take(f"{proj_key}.bias", _shape(target["proj_bias"]),
                                 f"{path}/proj_bias")
  return out


def _block(reader, style, prefix, target, path):
  names = BLOCK_NAMES[style]
  return {
      "norm1": _norm(reader, f"{prefix}.{names['norm1']}", target["norm1"], f"{path}/norm1"),
      "attn": _attention(reader, style, prefix, target["attn"], f"{path}/attn"),
      "norm2": _norm(reader, f"{prefix}.{names['norm2']}", target["norm2"], f"{path}/norm2"),
      "mlp": {
          "fc1": _dense(reader, f"{prefix}.{names['fc1']}", target["mlp"]["fc1"],
                        f"{path}/mlp/fc1"),
          "fc2": _dense(reader, f"{prefix}.{names['fc2']}", target["mlp"]["fc2"],
                        f"{path}/mlp/fc2"),
      },
  }


def _blocks(reader, style, name_format, target, path):
  return {i: _block(reader, style, name_format.format(i), target[i], f"{path}/{i}")
          for i in target}


def _check_sincos(reader, key, num_positions, dim, what, fix=""):
  """Consumes a saved fixed sinusoid table, checking it is the one our model computes."""
  value = reader.consume(key)
  if value is None:
    return
  table = layers.sincos_1d(num_positions, dim)
  if value.size != table.size or not np.allclose(value.reshape(table.shape), table, atol=1e-5):
    reader.mismatches.append(f"{what}: checkpoint {key} (shape {value.shape}) is not the fixed "
                             f"sinusoid table [{num_positions}, {dim}] our model computes{fix}")


def _encoder(reader, layout, target, encoder, path="encoder"):
  out = {"patch_embed": _patch_embed(reader, layout.patch_embed, target["patch_embed"],
                                     f"{path}/patch_embed"),
         "blocks": _blocks(reader, layout.block_style, layout.blocks, target["blocks"],
                           f"{path}/blocks")}
  if "pos_embed" in target:  # learned: [1, N, D] in the official files
    table = target["pos_embed"]["embedding"]
    value = None
    if layout.pos_embed is None:
      reader.reasons[f"{path}/pos_embed/embedding"] = [
          f"{layout.name} checkpoints have fixed sinusoid position embeddings: use "
          "config.model.vit.pos_embed='sincos'"]
    else:
      value = reader.take(layout.pos_embed, (1, *_shape(table)), f"{path}/pos_embed/embedding")
    out["pos_embed"] = {"embedding": None if value is None else value[0]}
  elif layout.pos_embed is not None:  # ours is the fixed table: a saved one must equal it
    width = _shape(target["patch_embed"]["bias"])[0]
    _check_sincos(reader, layout.pos_embed, encoder.num_patches, width, f"{path}/pos_embed",
                  "; learned position embeddings need config.model.vit.pos_embed='learned' (the "
                  "'vit' model)")
  if "cls_token" in target:
    reader.reasons[f"{path}/cls_token"] = [
        "VideoMAE-family models have no CLS token: use config.model.vit.pool='mean'"]
  return out


def _convert_vit(reader, layout, target, model):
  return {"encoder": _encoder(reader, layout, target["encoder"], model.encoder),
          "norm": _norm(reader, layout.fc_norm, target["norm"], "norm"),
          "head": _dense(reader, layout.head, target["head"], "head")}


def _convert_masked(reader, layout, target, model):
  decoder = target["decoder"]
  out = {
      "encoder": _encoder(reader, layout, target["encoder"], model.encoder),
      "norm": _norm(reader, layout.encoder_norm, target["norm"], "norm"),
      "encoder_to_decoder": _dense(reader, layout.encoder_to_decoder,
                                   target["encoder_to_decoder"], "encoder_to_decoder"),
      "mask_token": reader.take(layout.mask_token, _shape(target["mask_token"]), "mask_token"),
      "decoder": {
          "blocks": _blocks(reader, layout.decoder_block_style, layout.decoder_blocks,
                            decoder["blocks"], "decoder/blocks"),
          "norm": _norm(reader, layout.decoder_norm, decoder["norm"], "decoder/norm"),
          "head": _dense(reader, layout.decoder_head, decoder["head"], "decoder/head"),
      },
  }
  if "classifier" in target:
    classifier = target["classifier"]
    if layout.bridge_proj is None:
      reader.reasons["classifier"] = [
          f"{layout.name} checkpoints have no MAR bridging classifier: convert with "
          "config.model.mae.classifier='none' and start MAR from the result with config.init_from "
          "(the classifier then starts fresh)"]
    else:
      out["classifier"] = {
          "proj": _dense(reader, layout.bridge_proj, classifier["proj"], "classifier/proj"),
          "blocks": _blocks(reader, "mar_bridge", layout.bridge_blocks, classifier["blocks"],
                            "classifier/blocks"),
          "norm": _norm(reader, layout.bridge_norm, classifier["norm"], "classifier/norm"),
          "head": _dense(reader, layout.bridge_head, classifier["head"], "classifier/head"),
      }
  if layout.name == "mar":
    _mar_extras(reader, model, decoder)
  return out


def _mar_extras(reader, model, decoder):
  """MAR's model also saves its data normalisation, the decoder's sinusoid table and an unused
  mask token of the bridging head: check the first two against our model, drop the last."""
  width = _shape(decoder["norm"]["scale"])[0]
  _check_sincos(reader, "pos_embed", model.encoder.num_patches, width, "decoder position table")
  for name, ours in (("mean", model.mean), ("std", model.std)):
    value = reader.consume(name)
    if value is not None and not np.allclose(value.reshape(-1), ours, atol=1e-6):
      reader.mismatches.append(
          f"data {name}: the checkpoint was trained with {name}={tuple(value.reshape(-1))}, the "
          f"config has {tuple(ours)}; set config.data.{name} to the checkpoint's")
  # TransformerBridgingClsHead builds a mask token its forward never uses.
  reader.consume("cls_head.mask_token")


# ---- TimeSformer and ViViT: each a name table, read by one walker (`_from_table`) ----
# Our parameter path -> checkpoint name. A block's attention maps to (q/k/v Linear(s), output
# Linear): one fused qkv Linear or three (query, key, value), each with a bias.

# facebookresearch/TimeSformer saves `VisionTransformer` as `model.` (its trainer's
# "model_state"); HF is `TimesformerForVideoClassification`.
TIMESFORMER_NAMES = {
    "official": {
        "patch_embed": "model.patch_embed.proj",
        "cls_token": "model.cls_token",
        "pos_embed": "model.vit.pos_embed",
        "time_embed": "model.time_embed",
        "blocks": "model.blocks.{}",
        "norm": "model.norm",
        "head": "model.head",
    },
    "hf": {
        "patch_embed": "timesformer.embeddings.patch_embeddings.projection",
        "cls_token": "timesformer.embeddings.cls_token",
        "pos_embed": "timesformer.embeddings.position_embeddings",
        "time_embed": "timesformer.embeddings.time_embeddings",
        "blocks": "timesformer.encoder.layer.{}",
        "norm": "timesformer.layernorm",
        "head": "classifier",
    },
}
TIMESFORMER_BLOCK_NAMES = {
    "official": {
        "temporal/norm": "temporal_norm1",
        "temporal/attn": ("temporal_attn.qkv", "temporal_attn.proj"),
        "temporal/fc": "temporal_fc",
        "norm1": "norm1",
        "attn": ("attn.qkv", "attn.proj"),
        "norm2": "norm2",
        "mlp/fc1": "mlp.fc1",
        "mlp/fc2": "mlp.fc2",
    },
    "hf": {
        "temporal/norm": "temporal_layernorm",
        "temporal/attn": ("temporal_attention.attention.qkv", "temporal_attention.output.dense"),
        "temporal/fc": "temporal_dense",
        "norm1": "layernorm_before",
        "attn": ("attention.attention.qkv", "attention.output.dense"),
        "norm2": "layernorm_after",
        "mlp/fc1": "intermediate.dense",
        "mlp/fc2": "output.dense",
    },
}

# HF `VivitForVideoClassification`: ViViT model 1 (converted by HF from Scenic).
VIVIT_HF_NAMES = {
    "encoder/patch_embed": "vivit.embeddings.patch_embeddings.projection",
    "encoder/cls_token": "vivit.embeddings.cls_token",
    "encoder/pos_embed": "vivit.embeddings.position_embeddings",
    "encoder/blocks": "vivit.encoder.layer.{}",
    "norm": "vivit.layernorm",
    "head": "classifier",
}
VIVIT_HF_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn": (("attention.attention.query", "attention.attention.key",
              "attention.attention.value"), "attention.output.dense"),
    "norm2": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}


# HF `ViTForImageClassification` (and `ViTModel`, whose names lack "vit."): an image ViT, the
# starting point that init_from inflates to video (vidtx.checkpoint).
VIT_HF_NAMES = {
    "encoder/patch_embed": "vit.embeddings.patch_embeddings.projection",
    "encoder/cls_token": "vit.embeddings.cls_token",
    "encoder/pos_embed": "vit.embeddings.position_embeddings",
    "encoder/blocks": "vit.encoder.layer.{}",
    "norm": "vit.layernorm",
    "head": "classifier",
}


def is_image_vit(state_dict) -> bool:
  return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings."))
             for k in strip_wrappers(state_dict)) and not is_swin(state_dict)


def convert_image_vit(state_dict, model_config) -> dict:
  """Our params of a one-frame ViT (tubelets 1 x h x w, CLS, learned positions, the config's
  width, depth and heads) from an HF image ViT, for init_from to inflate into a video model.
  A `ViTModel` has no classifier and gives no head; its pooler is not used."""
  state_dict = strip_wrappers(state_dict)
  if not any(k.startswith("vit.") for k in state_dict):  # ViTModel
    state_dict = {f"vit.{k}": v for k, v in state_dict.items() if not k.startswith("pooler.")}
  width, depth, heads = vit.size(model_config)
  _, ph, pw = model_config.patch_size
  positions = to_numpy(state_dict["vit.embeddings.position_embeddings"]).shape[1] - 1
  classifier = state_dict.get("classifier.weight")
  model = nnx.eval_shape(lambda: vit.VideoViT(
      num_classes=1 if classifier is None else to_numpy(classifier).shape[0], num_frames=1,
      image_size=math.isqrt(positions) * ph, patch_size=(1, ph, pw), width=width, depth=depth,
      num_heads=heads, mlp_ratio=model_config.mlp_ratio, k_bias=True, pos_embed="learned",
      pool="cls", rngs=nnx.Rngs(0)))
  target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  if classifier is None:
    del target["head"]
  reader = _Reader(state_dict)
  out = _from_table(reader, VIT_HF_NAMES, VIVIT_HF_BLOCK_NAMES, target)
  _check_complete(reader, target, out, "hf image ViT", model)
  return out


def _conv_patch_embed(reader, key, target, path):
  """Conv3d weight [D, C, kt, kh, kw] -> kernel [kt, kh, kw, C, D]; for a 1 x kh x kw tubelet
  the per-frame Conv2d weight [D, C, kh, kw] (TimeSformer)."""
  kt, kh, kw, c, d = _shape(target["kernel"])
  weight = reader.take(f"{key}.weight", (d, c, kh, kw) if kt == 1 else (d, c, kt, kh, kw),
                       f"{path}/kernel")
  if weight is not None:
    weight = weight.reshape(d, c, kt, kh, kw).transpose(2, 3, 4, 1, 0)
  out = {"kernel": weight}
  if "bias" in target:  # CLIP's patch embedding has none
    out["bias"] = reader.take(f"{key}.bias", _shape(target["bias"]), f"{path}/bias")
  return out


def _biased_qkv_attention(reader, keys, target, path):
  """Attention with q, k and v biases from (qkv Linear name or (query, key, value) names,
  output Linear name)."""
  qkv_names, proj_key = keys
  qkv_names = (qkv_names,) if isinstance(qkv_names, str) else qkv_names
  qkv_shape = _shape(target["qkv"])
  dim, _, heads, head_dim = qkv_shape
  inner = heads * head_dim
  rows = 3 * inner // len(qkv_names)
  weights = [reader.take(f"{name}.weight", (rows, dim), f"{path}/qkv") for name in qkv_names]
  out = {"qkv": None if any(w is None for w in weights) else _qkv_kernel(
      np.concatenate(weights), qkv_shape)}
  bias_names = [name for name in ("q_bias", "k_bias", "v_bias") if name in target]
  if bias_names:  # qkv_bias=False models have none; the checkpoint's then stay unused
    biases = [reader.take(f"{name}.bias", (rows,), *(f"{path}/{b}" for b in bias_names))
              for name in qkv_names]
    bias = None if any(b is None for b in biases) else np.concatenate(biases)
    for i, name in enumerate(("q_bias", "k_bias", "v_bias")):
      out[name] = None if bias is None else bias[i * inner:(i + 1) * inner]
  proj = reader.take(f"{proj_key}.weight", (dim, inner), f"{path}/proj")
  out["proj"] = None if proj is None else proj.T.reshape(_shape(target["proj"]))
  out["proj_bias"] = reader.take(f"{proj_key}.bias", _shape(target["proj_bias"]),
                                 f"{path}/proj_bias")
  return out


def _get(tree, path):
  for part in path.split("/"):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _put(tree, path, value):
  *parents, leaf = path.split("/")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def _from_table(reader, names, block_names, target, path=""):
  """Our params for `target` from a name table; parts the model lacks (a time embedding, the
  temporal steps) are skipped, so a checkpoint that has them reports them unused."""
  out = {}
  for ours, theirs in names.items():
    part, where = _get(target, ours), f"{path}{ours}"
    if part is None:
      continue
    leaf = ours.rsplit("/", 1)[-1]
    if leaf == "blocks":
      value = {i: _from_table(reader, {k: _prefixed(theirs.format(i), v)
                                       for k, v in block_names.items()},
                              {}, part[i], f"{where}/{i}/") for i in part}
    elif leaf == "patch_embed":
      value = _conv_patch_embed(reader, theirs, part, where)
    elif leaf == "cls_token":
      value = reader.take(theirs, _shape(part), where)
    elif leaf in ("pos_embed", "time_embed"):  # learned tables, saved as [1, N, D]
      table = reader.take(theirs, (1, *_shape(part["embedding"])), f"{where}/embedding")
      value = {"embedding": None if table is None else table[0]}
    elif "qkv" in part:
      value = _biased_qkv_attention(reader, theirs, part, where)
    elif "scale" in part:
      value = _norm(reader, theirs, part, where)
    else:
      value = _dense(reader, theirs, part, where)
    _put(out, ours, value)
  return out


def _prefixed(prefix, names):
  """Block-relative checkpoint names (a name or nested tuples of names) under `prefix`."""
  if isinstance(names, str):
    return f"{prefix}.{names}"
  return tuple(_prefixed(prefix, name) for name in names)


def _convert_timesformer(reader, target):
  keys = reader.arrays
  if any(k.startswith("timesformer.") for k in keys):
    layout = "hf"
  elif any(k.startswith("model.blocks.") for k in keys):
    layout = "official"
  else:
    raise ValueError(f"unrecognised TimeSformer checkpoint (keys e.g. {sorted(keys)[:5]}): "
                     "expected HF ('timesformer.embeddings...') or facebookresearch/TimeSformer "
                     "('model.blocks.0...')")
  return f"{layout} TimeSformer", _from_table(reader, TIMESFORMER_NAMES[layout],
                                              TIMESFORMER_BLOCK_NAMES[layout], target)


def _convert_vivit(reader, target, model):
  keys = reader.arrays
  if not any(k.startswith("vivit.") for k in keys):
    raise ValueError(f"unrecognised ViViT checkpoint (keys e.g. {sorted(keys)[:5]}): expected "
                     "HF ViViT ('vivit.embeddings...')")
  if not isinstance(model, vivit.ViViT) or model.encoder.attention != "joint":
    raise ValueError("HF ViViT checkpoints are model 1: convert them with "
                     "config.model.attention='joint'")
  return "hf ViViT", _from_table(reader, VIVIT_HF_NAMES, VIVIT_HF_BLOCK_NAMES, target)


# ---- VTN: the PySlowFast checkpoint (bomri/SlowFast `VTN`), or HF LongformerModel parts ----
# The reference saves its timm ViT as `backbone.`, its Longformer (an HF `LongformerModel`
# without word embeddings or pooler) as `temporal_encoder.`, the temporal CLS as `cls_token` and
# the head nn.Sequential(LN, Linear, GELU, Dropout, Linear) as `mlp_head.{0,1,4}`.
VTN_NAMES = {
    "encoder/patch_embed": "backbone.patch_embed.proj",
    "encoder/cls_token": "backbone.cls_token",
    "encoder/pos_embed": "backbone.pos_embed",
    "encoder/blocks": "backbone.blocks.{}",
    "norm": "backbone.norm",
    "temporal/cls_token": "cls_token",
    "head_norm": "mlp_head.0",
    "head_hidden": "mlp_head.1",
    "head": "mlp_head.4",
}
# timm's VisionTransformer block: one fused qkv Linear with a [3D] bias.
# timm's ViT blocks are TimeSformer's official ones without the temporal parts.
TIMM_VIT_BLOCK_NAMES = {k: v for k, v in TIMESFORMER_BLOCK_NAMES["official"].items()
                        if not k.startswith("temporal/")}
# Our `vtn.TemporalEncoder` path -> HF `LongformerModel` name (the embedding tables, nn.Embedding
# weights [rows, D], are read apart: LONGFORMER_TABLES).
LONGFORMER_NAMES = {
    "norm": "embeddings.LayerNorm",
    "blocks": "encoder.layer.{}",
}
LONGFORMER_TABLES = {
    "pos_embed/embedding": "embeddings.position_embeddings.weight",
    "type_embed": "embeddings.token_type_embeddings.weight",
}
LONGFORMER_BLOCK_NAMES = {
    "attn/query": "attention.self.query",
    "attn/key": "attention.self.key",
    "attn/value": "attention.self.value",
    "attn/query_global": "attention.self.query_global",
    "attn/key_global": "attention.self.key_global",
    "attn/value_global": "attention.self.value_global",
    "attn/proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
# What VTN does not read from a Longformer: it passes inputs_embeds (no word embeddings) and
# takes the CLS token's last hidden state (no pooler); index buffers.
LONGFORMER_UNUSED = ("embeddings.word_embeddings.", "pooler.", "embeddings.position_ids")


def _longformer(reader, prefix, target, path):
  """`vtn.TemporalEncoder` params but its CLS token from HF Longformer names under `prefix`."""
  names = {ours: f"{prefix}{theirs}" for ours, theirs in LONGFORMER_NAMES.items()}
  out = _from_table(reader, names, LONGFORMER_BLOCK_NAMES, target, path)
  for ours, theirs in LONGFORMER_TABLES.items():
    _put(out, ours, reader.take(f"{prefix}{theirs}", _shape(_get(target, ours)), path + ours))
  for key in reader.arrays:
    if key.startswith(tuple(prefix + name for name in LONGFORMER_UNUSED)):
      reader.consume(key)
  return out


def convert_longformer(state_dict, model: "vtn.TemporalEncoder") -> dict:
  """Our `vtn.TemporalEncoder` params from an HF `LongformerModel` state dict (tables
  LONGFORMER_NAMES, LONGFORMER_TABLES, LONGFORMER_BLOCK_NAMES). Its CLS token, which VTN keeps
  outside the Longformer, is not filled: the result lacks "cls_token". Raises ValueError like
  `convert`."""
  reader = _Reader(strip_wrappers(state_dict))
  target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  del target["cls_token"]
  out = _longformer(reader, "", target, "")
  _check_complete(reader, target, out, "hf Longformer", model)
  return out


def _convert_vtn(reader, target):
  keys = reader.arrays
  if not any(k.startswith("temporal_encoder.") for k in keys):
    raise ValueError(f"unrecognised VTN checkpoint (keys e.g. {sorted(keys)[:5]}): expected "
                     "PySlowFast's ('backbone.blocks.0...', 'temporal_encoder.encoder.layer.0...'"
                     "). An image ViT for the backbone goes through vidtx.tools.convert_weights "
                     "and config.init_from")
  out = _from_table(reader, VTN_NAMES, TIMM_VIT_BLOCK_NAMES, target)
  temporal = {k: v for k, v in target["temporal"].items() if k != "cls_token"}
  out["temporal"].update(_longformer(reader, "temporal_encoder.", temporal, "temporal/"))
  return "PySlowFast VTN", out


# ---- CLIP: HF `CLIPVisionModel`, `CLIPVisionModelWithProjection` or `CLIPModel` ----
# Our `clip.CLIPVision` path -> HF name; the block table is relative to a layer.
CLIP_HF_NAMES = {
    "patch_embed": "vision_model.embeddings.patch_embedding",  # a Conv2d without bias
    "norm_pre": "vision_model.pre_layrnorm",  # sic: HF's spelling of CLIP's ln_pre
    "blocks": "vision_model.encoder.layers.{}",
    "norm": "vision_model.post_layernorm",  # ln_post
    "proj": "visual_projection",  # bias-free; only WithProjection and CLIPModel have it
}
CLIP_HF_BLOCK_NAMES = {
    "norm1": "layer_norm1",
    "attn": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj"),
    "norm2": "layer_norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
# Saved without a batch axis: the class embedding [D] and the position table [1 + S, D] (an
# nn.Embedding).
CLIP_HF_CLS = "vision_model.embeddings.class_embedding"
CLIP_HF_POSITIONS = "vision_model.embeddings.position_embedding.weight"
# What a vision tower does not read from a full CLIPModel, and index buffers older
# transformers versions saved.
CLIP_HF_UNUSED = ("text_model.", "text_projection.", "logit_scale", "position_ids")


def is_clip(state_dict) -> bool:
  return any(k.startswith("vision_model.embeddings.") for k in strip_wrappers(state_dict))


def convert_clip(state_dict, model: nnx.Module) -> dict:
  """Our params of a `clip.CLIPVision` tower from an HF CLIP state dict (table CLIP_HF_NAMES).

  A `CLIPVisionModel` has no visual projection: its tower needs proj_dim=0; the projection of
  `CLIPVisionModelWithProjection` and `CLIPModel` needs proj_dim = their projection_dim. A
  CLIPModel's text tower is not read. Raises ValueError like `convert`.
  """
  state_dict = strip_wrappers(state_dict)
  if not is_clip(state_dict):
    raise ValueError(f"not an HF CLIP checkpoint (keys e.g. {sorted(state_dict)[:5]}): expected "
                     "'vision_model.embeddings...' (CLIPVisionModel, CLIPModel)")
  reader = _Reader(state_dict)
  target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  out = _from_table(reader, CLIP_HF_NAMES, CLIP_HF_BLOCK_NAMES, target)
  cls_shape = _shape(target["cls_token"])
  cls = reader.take(CLIP_HF_CLS, cls_shape[-1:], "cls_token")
  out["cls_token"] = None if cls is None else cls.reshape(cls_shape)
  out["pos_embed"] = {"embedding": reader.take(
      CLIP_HF_POSITIONS, _shape(target["pos_embed"]["embedding"]), "pos_embed/embedding")}
  for key in reader.arrays:
    if key.startswith(CLIP_HF_UNUSED) or key.endswith("position_ids"):
      reader.consume(key)
  if "proj" not in target and "visual_projection.weight" in reader.arrays:
    reader.reasons["proj"] = ["the model has no visual projection"]
  _check_complete(reader, target, out, "hf CLIP", model)
  return out


def convert_clip_image_vit(state_dict, model_config) -> dict:
  """Our params of a one-frame CLIP-style ViT (`vit.VideoViT(clip_style=True)`, tubelets
  1 x p x p, CLS, learned positions, the config's width, depth and heads) from an HF CLIP
  checkpoint, for init_from to inflate into a video ViT or TimeSformer with
  model.clip_style=True. The tower goes under `encoder/`, ln_post is the model's `norm`; the
  visual projection and a CLIPModel's text tower are not used, and there is no head."""
  if not model_config.clip_style:
    raise ValueError("an HF CLIP checkpoint fills a model with CLIP's conventions: set "
                     "--config.model.clip_style=True (model.name 'vit' or 'timesformer'), or "
                     "use model.name='ila'")
  state_dict = strip_wrappers(state_dict)
  projection = state_dict.get("visual_projection.weight")
  width, depth, heads = vit.size(model_config)
  _, ph, _ = model_config.patch_size
  positions = to_numpy(state_dict[CLIP_HF_POSITIONS]).shape[0] - 1
  tower = nnx.eval_shape(lambda: clip.CLIPVision(
      image_size=math.isqrt(positions) * ph, patch_size=ph, width=width, depth=depth,
      num_heads=heads, mlp_ratio=model_config.mlp_ratio,
      proj_dim=0 if projection is None else to_numpy(projection).shape[0], rngs=nnx.Rngs(0)))
  params = convert_clip(state_dict, tower)
  params.pop("proj", None)
  return {"encoder": {k: v for k, v in params.items() if k != "norm"}, "norm": params["norm"]}


# ---- Swin: HF `SwinForImageClassification` (`swin.`, `classifier`) or `SwinModel` ----
# Into TPS (`tps.TPS`) as TPS starts from ImageNet: the Conv2d patch kernel inflated over the
# tubelet's frames, each 2-D relative position bias table tiled over the Δt rows (the
# reference's inflate_weights). Our path -> HF name; the stage and block tables are relative.
SWIN_HF_NAMES = {
    "backbone/patch_embed": "swin.embeddings.patch_embeddings.projection",
    "backbone/patch_norm": "swin.embeddings.norm",
    "backbone/stages": "swin.encoder.layers.{}",
    "backbone/norm": "swin.layernorm",
    "head": "classifier",
}
SWIN_HF_STAGE_NAMES = {
    "blocks": "blocks.{}",
    "downsample/norm": "downsample.norm",  # patch merging; not in the last stage
    "downsample/reduction": "downsample.reduction",
}
SWIN_HF_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn": (("attention.self.query", "attention.self.key", "attention.self.value"),
             "attention.output.dense"),
    "attn/relative_position_bias_table": "attention.self.relative_position_bias_table",
    "norm2": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}
SWIN_HF_INDEX = "attention.self.relative_position_index"  # a buffer, rebuilt by the model


def is_swin(state_dict) -> bool:
  return any(k.endswith("relative_position_bias_table") for k in strip_wrappers(state_dict))


def convert_swin(state_dict, model: nnx.Module, inflation: str = "average") -> dict:
  """Our params of a `tps.TPS` from an HF Swin image model (table SWIN_HF_NAMES).

  `inflation` of the patch kernel over the tubelet's t frames: "average" (repeated / t, TPS's)
  or "central" (frame t // 2 only). A `SwinModel` has no classifier and gives no head (a
  training run's init_from keeps a fresh one); a classifier must fit the model's head. Raises
  ValueError like `convert`.
  """
  if inflation not in ("average", "central"):
    raise ValueError(f"inflation={inflation!r}: use 'average' or 'central'")
  state_dict = strip_wrappers(state_dict)
  if not any(k.startswith("swin.") for k in state_dict):  # SwinModel
    state_dict = {f"swin.{k}": v for k, v in state_dict.items()}
  reader = _Reader(state_dict)
  target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  if "classifier.weight" not in reader.arrays:
    del target["head"]
  names = dict(SWIN_HF_NAMES)
  stages = names.pop("backbone/stages")
  out = _from_table(reader, {k: v for k, v in names.items() if k != "backbone/patch_embed"},
                    {}, target)
  out["backbone"]["patch_embed"] = _inflated_patch_embed(
      reader, names["backbone/patch_embed"], target["backbone"]["patch_embed"],
      "backbone/patch_embed", inflation)
  frames = model.backbone.grid[0]
  out["backbone"]["stages"] = {}
  for i, stage in target["backbone"]["stages"].items():
    prefix, path = stages.format(i), f"backbone/stages/{i}/"
    converted = _from_table(reader, {k: f"{prefix}.{v}" for k, v in SWIN_HF_STAGE_NAMES.items()
                                     if k != "blocks"}, {}, stage, path)
    converted["blocks"] = {}
    for j, block in stage["blocks"].items():
      block_prefix = f"{prefix}.{SWIN_HF_STAGE_NAMES['blocks'].format(j)}"
      table_key = f"{block_prefix}.{SWIN_HF_BLOCK_NAMES['attn/relative_position_bias_table']}"
      names = {k: _prefixed(block_prefix, v) for k, v in SWIN_HF_BLOCK_NAMES.items()
               if k != "attn/relative_position_bias_table"}
      converted["blocks"][j] = _from_table(reader, names, {}, block, f"{path}blocks/{j}/")
      converted["blocks"][j]["attn"]["relative_position_bias_table"] = _tiled_table(
          reader, table_key, _shape(block["attn"]["relative_position_bias_table"]), frames,
          f"{path}blocks/{j}/attn/relative_position_bias_table")
      reader.consume(f"{block_prefix}.{SWIN_HF_INDEX}")
    out["backbone"]["stages"][i] = converted
  _check_complete(reader, target, out, "hf Swin", model)
  return out


def _inflated_patch_embed(reader, key, target, path, inflation):
  """Conv2d weight [D, C, kh, kw] -> kernel [kt, kh, kw, C, D] over the tubelet's frames."""
  kt, kh, kw, c, d = _shape(target["kernel"])
  weight = reader.take(f"{key}.weight", (d, c, kh, kw), f"{path}/kernel")
  kernel = None
  if weight is not None:
    frame = weight.transpose(2, 3, 1, 0)
    if inflation == "average":  # a clip of equal frames gives the image's tokens
      kernel = np.repeat(frame[None], kt, axis=0) / kt
    else:
      kernel = np.zeros((kt, kh, kw, c, d), np.float32)
      kernel[kt // 2] = frame
  return {"kernel": kernel,
          "bias": reader.take(f"{key}.bias", _shape(target["bias"]), f"{path}/bias")}


def _tiled_table(reader, key, shape, frames, path):
  """A 2-D relative position bias table [(2w-1)^2, heads] repeated for each of the 2T-1 Δt
  rows of ours [(2T-1) (2w-1)^2, heads] (Δt major)."""
  rows, heads = shape
  table = reader.take(key, (rows // (2 * frames - 1), heads), path)
  return None if table is None else np.tile(table, (2 * frames - 1, 1))


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{name}/"))
    else:
      flat[name] = value
  return flat


def convert(state_dict, model: nnx.Module) -> dict:
  """Our nested pure param dict (float32 numpy) for `model` from a PyTorch state dict.

  `state_dict` maps names to numpy arrays or torch tensors (wrappers such as {"model": ...} are
  removed). Raises ValueError listing every unused checkpoint key, every parameter left
  unfilled and every shape mismatch.
  """
  state_dict = strip_wrappers(state_dict)
  if isinstance(model, clip.CLIPVision):
    return convert_clip(state_dict, model)
  if isinstance(model, tps.TPS):
    return convert_swin(state_dict, model)
  if isinstance(model, ila.ILA):
    # Only its CLIP tower comes from a CLIP checkpoint: save this and start the run from it
    # with config.init_from, which copies `clip/` by name and keeps the ILA modules fresh.
    return {"clip": convert_clip(state_dict, model.clip)}
  reader = _Reader(state_dict)
  target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  if isinstance(model, timesformer.TimeSformer):
    layout_name, out = _convert_timesformer(reader, target)
  elif isinstance(model, (vivit.ViViT, vivit.FactorisedEncoder)):
    layout_name, out = _convert_vivit(reader, target, model)
  elif isinstance(model, vtn.VTN):
    layout_name, out = _convert_vtn(reader, target)
  elif isinstance(model, (vit.VideoViT, mae.MaskedVideoModel)):
    layout = detect_layout(state_dict)
    layout_name = layout.name
    if isinstance(model, vit.VideoViT):
      out = _convert_vit(reader, layout, target, model)
    else:
      out = _convert_masked(reader, layout, target, model)
  else:
    raise ValueError(f"cannot convert into a {type(model).__name__}: converters exist for "
                     "VideoViT (config.model.name='vit'), MaskedVideoModel ('mae'), TimeSformer "
                     "('timesformer'), ViViT ('vivit', model 1), CLIPVision and ILA ('ila'), "
                     "VTN ('vtn')")
  _check_complete(reader, target, out, layout_name, model)
  return out


def _check_complete(reader, target, out, layout_name, model):
  """Raises ValueError listing what `out` leaves unfilled of `target`, what disagrees and what
  of the checkpoint went unused."""
  wanted, got = _flatten(target), _flatten(out)
  unfilled = [f"{name} {_shape(wanted[name])}: {'; '.join(_reasons(reader, name))}"
              for name in wanted if got.get(name) is None]
  unused = sorted(set(reader.arrays) - reader.used)
  problems = []
  if unfilled:
    problems.append(f"model parameters not filled ({len(unfilled)}):{_listed(unfilled)}")
  if reader.mismatches:
    problems.append(f"checkpoint entries that disagree with the model:"
                    f"{_listed(reader.mismatches)}")
  if unused:
    problems.append(f"checkpoint keys not used ({len(unused)}):{_listed(unused)}")
  if problems:
    hint = _hint(model, unused)
    raise ValueError(f"cannot convert this {layout_name} checkpoint into "
                     f"{type(model).__name__}:\n  " + "\n  ".join(problems)
                     + (f"\nhint: {hint}" if hint else ""))
  extra = sorted(set(got) - set(wanted))
  if extra:  # a converter bug, not a checkpoint problem
    raise AssertionError(f"converted parameters the model lacks: {extra}")


def _reasons(reader, name):
  """Why parameter `name` is not filled: recorded against it or against a parent module."""
  parts = name.split("/")
  for i in range(len(parts), 0, -1):
    if "/".join(parts[:i]) in reader.reasons:
      return reader.reasons["/".join(parts[:i])]
  return ["no source for it in this layout"]


def _listed(items) -> str:
  items = list(items)
  lines = "".join(f"\n    {item}" for item in items[:_MAX_LISTED])
  if len(items) > _MAX_LISTED:
    lines += f"\n    ... and {len(items) - _MAX_LISTED} more"
  return lines


def _hint(model, unused) -> str:
  """The likely fix for the commonest mismatch: a pre-training checkpoint for a classifier."""
  if isinstance(model, vit.VideoViT) and any(
      k.startswith(("decoder.", "encoder_to_decoder", "mask_token")) for k in unused):
    return ("this is a pre-training checkpoint: convert it with a model.name='mae' config "
            "(classifier='none', the same sizes) and point the fine-tuning run's "
            "config.init_from at the result, which copies the encoder by name")
  if any(".gamma_" in k for k in unused):
    return "the checkpoint uses layer scale (init_values > 0), which our blocks lack"
  if isinstance(model, timesformer.TimeSformer) and any("temporal" in k for k in unused):
    return "the checkpoint has divided space-time attention: config.model.attention='divided'"
  return ""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The state dict (numpy arrays) of a `.pth`/`.bin`/`.safetensors` file or of a HF
  `save_pretrained` directory, with wrappers such as {"model": ...} removed."""
  if os.path.isdir(path):
    return strip_wrappers(_load_hf_directory(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist: give a .pth/.bin/.safetensors "
                            "file or a HF save_pretrained directory")
  if path.endswith(".safetensors"):
    return strip_wrappers(_load_safetensors(path))
  return strip_wrappers(_to_numpy_tree(_torch_load(path)))


def _load_hf_directory(path):
  for name, loader in (("model.safetensors", _load_safetensors),
                       ("pytorch_model.bin", _torch_load)):
    if os.path.exists(os.path.join(path, name)):
      return _to_numpy_tree(loader(os.path.join(path, name)))
    index = os.path.join(path, f"{name}.index.json")
    if os.path.exists(index):  # sharded
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      merged = {}
      for shard in shards:
        merged.update(loader(os.path.join(path, shard)))
      return _to_numpy_tree(merged)
  raise FileNotFoundError(f"{path!r} holds no model.safetensors or pytorch_model.bin (nor a "
                          "sharded index): is it a HF save_pretrained directory?")


def _load_safetensors(path):
  from safetensors import numpy as safetensors_numpy
  try:
    return safetensors_numpy.load_file(path)  # no torch needed
  except TypeError:  # bfloat16, which numpy lacks: read through torch and widen
    from safetensors import torch as safetensors_torch
    return safetensors_torch.load_file(path, device="cpu")


def _torch_load(path):
  import torch
  # Official VideoMAE files also pickle the training args (an argparse.Namespace); allow that
  # one plain class and nothing else that could run code.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(f"torch.load({path!r}, weights_only=True) refused the file: {e}\nIf you "
                     "trust it, save its state dict alone: torch.save(torch.load(path, "
                     "weights_only=False)['model'], 'weights.pth') and convert that") from e


def _to_numpy_tree(loaded):
  if isinstance(loaded, dict):
    return {k: _to_numpy_tree(v) for k, v in loaded.items()}
  return to_numpy(loaded) if hasattr(loaded, "detach") else loaded
