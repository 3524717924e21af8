"""ViViT checkpoints into the vivit family's model 1 (attention="joint"): HF
`VivitForVideoClassification` (`vivit.`), HF's port of Scenic's model 1. HF has no models 2-4.
Its config.json is read against the model (`_check_settings`): our ViViT's MLPs use the tanh GELU
(Scenic's, HF's default "gelu_fast"), so an exact-GELU checkpoint is refused.
"""

from vidtx.weights import Source, settings, tables

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


# transformers.VivitConfig's fields and defaults.
HF_CONFIG = {
    "image_size": 224, "num_frames": 32, "tubelet_size": [2, 16, 16], "num_channels": 3,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu_fast", "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-06,
    "qkv_bias": True,
}


def _check_settings(s: settings.Settings, model) -> None:
  """An HF ViViT config against model 1 (`_convert` has refused the others)."""
  s.skip(*settings.DROPOUT_AND_INIT)
  encoder = model.encoder
  patch = encoder.patch_embed.patch
  frames, rows, _ = encoder.grid
  settings.check_rgb(s)
  s.agree("tubelet_size", patch, "model.patch_size")
  s.agree("num_frames", frames * patch[0], "data.num_frames")
  s.agree("image_size", rows * patch[1], "data.crop_size")
  settings.check_blocks(s, encoder.blocks)
  s.agree("qkv_bias", encoder.blocks[0].attn.q_bias is not None, "model.qkv_bias")
  if "classifier.weight" in s.keys:
    s.classes(model.head.kernel.shape[1])


HF = Source(name="HF ViViT", keys="'vivit.embeddings...'",
            detect=lambda keys: any(k.startswith("vivit.") for k in keys), convert=_convert,
            hf_settings=settings.HFConfig({"vivit": HF_CONFIG}, _check_settings))
SOURCES = (HF,)
