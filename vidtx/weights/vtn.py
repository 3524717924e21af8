"""VTN checkpoints into the vtn family's `VTN`: the PySlowFast checkpoint (bomri/SlowFast
`VTN`), or an HF `LongformerModel` alone into its temporal encoder (`vtn.TemporalEncoder`).

The reference saves its timm ViT as `backbone.`, its Longformer (an HF `LongformerModel`
without word embeddings or pooler) as `temporal_encoder.`, the temporal CLS as `cls_token` and
the head nn.Sequential(LN, Linear, GELU, Dropout, Linear) as `mlp_head.{0,1,4}`. An image ViT
for the backbone alone is an image checkpoint (`vidtx.weights.image`, then init_from).
"""

from vidtx.weights import Source, tables, timesformer

# Our `vtn.TemporalEncoder` path -> HF `LongformerModel` name; its CLS token, which VTN keeps
# outside the Longformer, is not there.
LONGFORMER_TABLE = {
    "pos_embed": tables.Unbatched("embeddings.position_embeddings.weight"),
    "type_embed": "embeddings.token_type_embeddings.weight",  # an nn.Embedding [2, D]
    "norm": "embeddings.LayerNorm",
    "blocks": tables.Blocks("encoder.layer.{}", {
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
    }),
}
# What VTN does not read from a Longformer: it passes inputs_embeds (no word embeddings) and
# takes the CLS token's last hidden state (no pooler); index buffers.
LONGFORMER_UNUSED = ("embeddings.word_embeddings.", "pooler.", "embeddings.position_ids")
PYSLOWFAST_TABLE = {
    "encoder": {
        "patch_embed": "backbone.patch_embed.proj",
        "cls_token": "backbone.cls_token",
        "pos_embed": "backbone.pos_embed",
        "blocks": tables.Blocks("backbone.blocks.{}", timesformer.TIMM_BLOCK),
    },
    "norm": "backbone.norm",
    "temporal": tables.Within("temporal_encoder.", LONGFORMER_TABLE),
    "temporal/cls_token": "cls_token",
    "head_norm": "mlp_head.0",
    "head_hidden": "mlp_head.1",
    "head": "mlp_head.4",
}


def _convert_pyslowfast(reader, target, model):
  del model
  out = tables.walk(reader, PYSLOWFAST_TABLE, target)
  reader.consume_prefixed(*(f"temporal_encoder.{name}" for name in LONGFORMER_UNUSED))
  return out


def _convert_longformer(reader, target, model):
  del model
  del target["cls_token"]  # VTN's own, not the Longformer's: left as the model has it
  out = tables.walk(reader, LONGFORMER_TABLE, target)
  reader.consume_prefixed(*LONGFORMER_UNUSED)
  return out


PYSLOWFAST = Source(
    name="PySlowFast VTN", keys="'backbone.blocks.0...', 'temporal_encoder.encoder.layer.0...'",
    detect=lambda keys: any(k.startswith("temporal_encoder.") for k in keys),
    convert=_convert_pyslowfast)
# Into a `vtn.TemporalEncoder`; `LONGFORMER.into("temporal")` fills a VTN's.
LONGFORMER = Source(
    name="HF Longformer", keys="'encoder.layer.0.attention.self.query_global...'",
    detect=lambda keys: any(k.startswith("encoder.layer.") and ".query_global." in k
                            for k in keys),
    convert=_convert_longformer)
