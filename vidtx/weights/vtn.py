"""VTN checkpoints into the vtn family's `VTN`: the PySlowFast checkpoint (bomri/SlowFast
`VTN`), or an HF `LongformerModel` alone into its temporal encoder (`vtn.TemporalEncoder`).

The reference saves its timm ViT as `backbone.`, its Longformer (an HF `LongformerModel`
without word embeddings or pooler) as `temporal_encoder.`, the temporal CLS as `cls_token` and
the head nn.Sequential(LN, Linear, GELU, Dropout, Linear) as `mlp_head.{0,1,4}`. An image ViT
for the backbone alone is an image checkpoint (`vidtx.weights.image`, then init_from). An HF
Longformer directory's config.json is read against the temporal encoder
(`_check_longformer_settings`).
"""

from vidtx.weights import Source, settings, tables, timesformer

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


# transformers.LongformerConfig's fields and defaults, with two that its first releases wrote.
LONGFORMER_CONFIG = {
    "attention_window": 512, "sep_token_id": 2, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12, "onnx_export": False,
    "attention_mode": "longformer", "ignore_attention_mask": False,
}


def _check_longformer_settings(s: settings.Settings, encoder) -> None:
  """An HF Longformer config against VTN's temporal encoder. VTN passes inputs_embeds and its
  own position ids, so the vocabulary and token ids are not used; the dropout is training's
  (config.model.vtn.dropout); onnx_export and the old attention_mode (its kernel) and
  ignore_attention_mask compute the same."""
  s.skip(*settings.DROPOUT_AND_INIT, "vocab_size", "onnx_export", "attention_mode",
         "ignore_attention_mask")
  block = encoder.blocks[0]
  settings.check_transformer(s, width=block.attn.query.kernel.shape[0],
                             depth=len(encoder.blocks), heads=block.attn.num_heads,
                             mlp=block.mlp, eps=block.norm1.eps,
                             depth_field="model.vtn.temporal_depth")
  # HF's attention_window counts both sides, one per layer or one for all.
  windows = s["attention_window"]
  windows = set(windows) if isinstance(windows, tuple) else {windows}
  both_sides = windows.pop()
  if windows or both_sides % 2:
    s.refuse("attention_window", "our VTN's Longformer layers share one window of as many "
             "frames on each side")
  elif both_sides != 2 * block.attn.window:
    s.differs("attention_window", f"window={block.attn.window} (each side)", "model.vtn.window",
              both_sides // 2)
  rows = encoder.pos_embed.embedding.shape[0]
  s.require("max_position_embeddings", (rows,), f"our VTN's position table has {rows} rows "
            "(the reference's: frame indices mod 286, then CLS and padding)")
  types = encoder.type_embed.shape[0]
  s.require("type_vocab_size", (types,), f"our VTN has {types} token types (frame, CLS)")


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
    convert=_convert_longformer,
    hf_settings=settings.HFConfig({"longformer": LONGFORMER_CONFIG}, _check_longformer_settings))
