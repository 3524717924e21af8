"""TimeSformer checkpoints into the timesformer family's `TimeSformer`: HF
`TimesformerForVideoClassification` (`timesformer.`) or the official
facebookresearch/TimeSformer files, whose trainer saves `VisionTransformer` as `model.`.

A block's attention is one fused qkv Linear with a full (q, k, v) bias. Parts the model lacks
(the temporal steps of joint or space-only attention, the time embedding of space-only) are
not read, so a checkpoint that has them reports them unused.

An HF checkpoint's config.json is read against the model (`_check_settings`); its attention_type
sets config.model.attention. For "space_only" ours is the reference's model, which averages
the frames' tokens before the final LayerNorm; HF's port classifies each frame apart instead.
"""

import math

from vidtx.weights import Source, settings, tables

# timm's VisionTransformer block, which the official TimeSformer block extends.
TIMM_BLOCK = {
    "norm1": "norm1",
    "attn": tables.Attention("attn.qkv", "attn.proj"),
    "norm2": "norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
OFFICIAL_TABLE = {
    "patch_embed": "model.patch_embed.proj",
    "cls_token": "model.cls_token",
    "pos_embed": "model.vit.pos_embed",
    "time_embed": "model.time_embed",
    "blocks": tables.Blocks("model.blocks.{}", {
        "temporal/norm": "temporal_norm1",
        "temporal/attn": tables.Attention("temporal_attn.qkv", "temporal_attn.proj"),
        "temporal/fc": "temporal_fc",
        **TIMM_BLOCK,
    }),
    "norm": "model.norm",
    "head": "model.head",
}
HF_TABLE = {
    "patch_embed": "timesformer.embeddings.patch_embeddings.projection",
    "cls_token": "timesformer.embeddings.cls_token",
    "pos_embed": "timesformer.embeddings.position_embeddings",
    "time_embed": "timesformer.embeddings.time_embeddings",
    "blocks": tables.Blocks("timesformer.encoder.layer.{}", {
        "temporal/norm": "temporal_layernorm",
        "temporal/attn": tables.Attention("temporal_attention.attention.qkv",
                                          "temporal_attention.output.dense"),
        "temporal/fc": "temporal_dense",
        "norm1": "layernorm_before",
        "attn": tables.Attention("attention.attention.qkv", "attention.output.dense"),
        "norm2": "layernorm_after",
        "mlp/fc1": "intermediate.dense",
        "mlp/fc2": "output.dense",
    }),
    "norm": "timesformer.layernorm",
    "head": "classifier",
}


def _converter(table):
  def convert(reader, target, model):
    del model
    out = tables.walk(reader, table, target)
    if any("temporal" in k for k in reader.unused()):
      reader.hints.append(
          "the checkpoint has divided space-time attention: config.model.attention='divided'")
    return out
  return convert


# transformers.TimesformerConfig's fields and defaults.
HF_CONFIG = {
    "image_size": 224, "patch_size": 16, "num_channels": 3, "num_frames": 8, "hidden_size": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02, "layer_norm_eps": 1e-06, "qkv_bias": True,
    "attention_type": "divided_space_time", "drop_path_rate": 0,
}
# HF's attention_type -> config.model.attention.
ATTENTIONS = {"divided_space_time": "divided", "joint_space_time": "joint",
              "space_only": "space_only"}


def _check_settings(s: settings.Settings, model) -> None:
  """An HF TimeSformer config against our TimeSformer."""
  s.skip(*settings.DROPOUT_AND_INIT, "drop_path_rate")
  _, p, pw = model.patch_embed.patch
  settings.check_rgb(s)
  s.agree("patch_size", settings.square((p, pw)), "model.patch_size",
          fix=(1, s["patch_size"], s["patch_size"]))
  s.agree("num_frames", model.num_frames, "data.num_frames")
  s.agree("image_size", math.isqrt(model.num_patches) * p, "data.crop_size")
  settings.check_blocks(s, model.blocks)
  s.agree("qkv_bias", model.blocks[0].attn.q_bias is not None, "model.qkv_bias")
  theirs = ATTENTIONS.get(s["attention_type"])
  if theirs is None:
    s.refuse("attention_type", f"our TimeSformer takes {sorted(ATTENTIONS)}")
  elif theirs != model.attention:
    s.differs("attention_type", repr(model.attention), "model.attention", theirs)
  if "classifier.weight" in s.keys:
    s.classes(model.head.kernel.shape[1])


HF = Source(name="HF TimeSformer", keys="'timesformer.embeddings...'",
            detect=lambda keys: any(k.startswith("timesformer.") for k in keys),
            convert=_converter(HF_TABLE),
            hf_settings=settings.HFConfig({"timesformer": HF_CONFIG}, _check_settings))
OFFICIAL = Source(name="facebookresearch/TimeSformer", keys="'model.blocks.0...'",
                  detect=lambda keys: any(k.startswith("model.blocks.") for k in keys),
                  convert=_converter(OFFICIAL_TABLE))
SOURCES = (HF, OFFICIAL)
