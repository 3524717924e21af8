"""TimeSformer checkpoints into the timesformer family's `TimeSformer`: HF
`TimesformerForVideoClassification` (`timesformer.`) or the official
facebookresearch/TimeSformer files, whose trainer saves `VisionTransformer` as `model.`.

A block's attention is one fused qkv Linear with a full (q, k, v) bias. Parts the model lacks
(the temporal steps of joint or space-only attention, the time embedding of space-only) are
not read, so a checkpoint that has them reports them unused.
"""

from vidtx.weights import Source, tables

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


HF = Source(name="HF TimeSformer", keys="'timesformer.embeddings...'",
            detect=lambda keys: any(k.startswith("timesformer.") for k in keys),
            convert=_converter(HF_TABLE))
OFFICIAL = Source(name="facebookresearch/TimeSformer", keys="'model.blocks.0...'",
                  detect=lambda keys: any(k.startswith("model.blocks.") for k in keys),
                  convert=_converter(OFFICIAL_TABLE))
SOURCES = (HF, OFFICIAL)
