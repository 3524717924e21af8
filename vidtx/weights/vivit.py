"""ViViT checkpoints into the vivit family's model 1 (attention="joint"): HF
`VivitForVideoClassification` (`vivit.`), HF's port of Scenic's model 1. HF has no models 2-4.
"""

from vidtx.weights import Source, tables

# HF's ViT block (ViViT's, and the image ViT's of vidtx.weights.image): separate query, key
# and value Linears, each with a bias.
HF_BLOCK = {
    "norm1": "layernorm_before",
    "attn": tables.Attention(("attention.attention.query", "attention.attention.key",
                              "attention.attention.value"), "attention.output.dense"),
    "norm2": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}
HF_TABLE = {
    "encoder": {
        "patch_embed": "vivit.embeddings.patch_embeddings.projection",
        "cls_token": "vivit.embeddings.cls_token",
        "pos_embed": "vivit.embeddings.position_embeddings",
        "blocks": tables.Blocks("vivit.encoder.layer.{}", HF_BLOCK),
    },
    "norm": "vivit.layernorm",
    "head": "classifier",
}


def _convert(reader, target, model):
  # Model 1 is the one whose encoder attends jointly over every token; model 2's spatial
  # encoder does too, under a temporal transformer of its own.
  if "temporal" in target or getattr(model.encoder, "attention", None) != "joint":
    raise ValueError("HF ViViT checkpoints are model 1: convert them with "
                     "config.model.attention='joint'")
  return tables.walk(reader, HF_TABLE, target)


HF = Source(name="HF ViViT", keys="'vivit.embeddings...'",
            detect=lambda keys: any(k.startswith("vivit.") for k in keys), convert=_convert)
SOURCES = (HF,)
