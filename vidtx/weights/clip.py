"""HF CLIP checkpoints (`CLIPVisionModel`, `CLIPVisionModelWithProjection` or `CLIPModel`,
`vision_model.`) into our CLIP image tower (`vidtx.models.clip.CLIPVision`): `TOWER`, and
`TOWER.into("clip")` for a model holding the tower as `clip` (ILA).

A `CLIPVisionModel` has no visual projection: its tower needs proj_dim=0; the projection of
`CLIPVisionModelWithProjection` and `CLIPModel` needs proj_dim = their projection_dim. A
CLIPModel's text tower is not read. An HF directory's config.json (`CLIPVisionConfig`, or
`CLIPConfig` with the tower's settings in vision_config) is read against the tower
(`check_settings`).
"""

from vidtx.weights import Source, settings, tables

POSITIONS = "vision_model.embeddings.position_embedding.weight"
PROJECTION = "visual_projection.weight"
BLOCK = {
    "norm1": "layer_norm1",
    "attn": tables.Attention(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                             "self_attn.out_proj"),
    "norm2": "layer_norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
# The tower up to its blocks, also a one-frame CLIP-style ViT's encoder (vidtx.weights.image).
EMBEDDING_AND_BLOCKS = {
    "patch_embed": "vision_model.embeddings.patch_embedding",  # a Conv2d without bias
    # Saved without a batch axis: the class embedding [D] and the position table [1 + S, D]
    # (an nn.Embedding).
    "cls_token": tables.Unbatched("vision_model.embeddings.class_embedding"),
    "pos_embed": tables.Unbatched(POSITIONS),
    "norm_pre": "vision_model.pre_layrnorm",  # sic: HF's spelling of CLIP's ln_pre
    "blocks": tables.Blocks("vision_model.encoder.layers.{}", BLOCK),
}
TOWER_TABLE = {
    **EMBEDDING_AND_BLOCKS,
    "norm": "vision_model.post_layernorm",  # ln_post
    "proj": "visual_projection",  # bias-free; only WithProjection and CLIPModel have it
}
# What a vision tower does not read from a full CLIPModel.
UNUSED = ("text_model.", "text_projection.", "logit_scale")


def detect(keys) -> bool:
  return any(k.startswith("vision_model.embeddings.") for k in keys)


def consume_unused(reader) -> None:
  """Marks what no vision model reads of a CLIP checkpoint used."""
  reader.consume_prefixed(*UNUSED)
  for key in reader.arrays:
    if key.endswith("position_ids"):  # index buffers older transformers versions saved
      reader.consume(key)


# transformers.CLIPVisionConfig's fields and defaults, and CLIPConfig's around it; with the
# fields the first releases wrote, as the hub's openai/clip-vit-* still hold them: a dropout
# (training's), and [text|vision]_config_dict, which HF reads over [text|vision]_config.
VISION_CONFIG = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3, "image_size": 224,
    "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
    "dropout": 0.0,
}
CLIP_CONFIG = {
    "text_config": None, "vision_config": None, "projection_dim": 512,
    "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "text_config_dict": None,
    "vision_config_dict": None,
}
MODEL_TYPES = {"clip_vision_model": VISION_CONFIG, "clip": CLIP_CONFIG}


def check_settings(s: settings.Settings, *, patch: tuple, blocks, patch_fix, image_size=None,
                   proj=None) -> None:
  """An HF CLIP config against a CLIP-style tower: its tubelet `patch` (1, p, p), `blocks`
  (`layers.Block`), the config value that sets a patch size p (`patch_fix(p)`), its image size
  (None: the model takes it from the checkpoint) and visual projection (a `layers.Dense`; None:
  the model has none and the checkpoint's is not read)."""
  clip_model = s.config.get("model_type") == "clip"
  if clip_model:
    vision = s.section("vision_config", VISION_CONFIG, over=s["vision_config_dict"])
    # The text tower and the contrastive logit scale are not read.
    s.skip("text_config", "text_config_dict", "logit_scale_init_value", "initializer_factor")
    vision.skip("projection_dim")  # CLIPModel's own projection_dim is the one it uses
  else:
    vision = s
  vision.skip("attention_dropout", "dropout", "initializer_range", "initializer_factor")
  _, p, pw = patch
  settings.check_rgb(vision)
  vision.agree("patch_size", settings.square((p, pw)), "model.patch_size",
               fix=patch_fix(vision["patch_size"]))
  if image_size is None:
    vision.skip("image_size")
  else:
    vision.agree("image_size", image_size, "data.crop_size")
  settings.check_blocks(vision, blocks)
  if proj is None:
    s.skip("projection_dim")
  else:
    s.agree("projection_dim", proj.kernel.shape[1], "model.ila.proj_dim")


def _check_tower_settings(s: settings.Settings, tower) -> None:
  """An HF CLIP config against our `CLIPVision` tower."""
  rows, _ = tower.grid
  check_settings(s, patch=tower.patch_embed.patch, blocks=tower.blocks,
                 patch_fix=lambda p: (1, p, p), image_size=rows * tower.patch_embed.patch[1],
                 proj=tower.proj)


def _convert(reader, target, model):
  del model
  out = tables.walk(reader, TOWER_TABLE, target)
  consume_unused(reader)
  if "proj" not in target and PROJECTION in reader.arrays:
    reader.hints.append(f"the checkpoint has CLIP's visual projection "
                        f"{list(reader.arrays[PROJECTION].shape)}, which the model lacks: give "
                        "the tower proj_dim = its first axis")
  return out


TOWER = Source(name="HF CLIP", keys="'vision_model.embeddings...'", detect=detect,
               convert=_convert,
               hf_settings=settings.HFConfig(MODEL_TYPES, _check_tower_settings))
