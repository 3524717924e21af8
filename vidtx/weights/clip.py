"""HF CLIP checkpoints (`CLIPVisionModel`, `CLIPVisionModelWithProjection` or `CLIPModel`,
`vision_model.`) into our CLIP image tower (`vidtx.models.clip.CLIPVision`): `TOWER`, and
`TOWER.into("clip")` for a model holding the tower as `clip` (ILA).

A `CLIPVisionModel` has no visual projection: its tower needs proj_dim=0; the projection of
`CLIPVisionModelWithProjection` and `CLIPModel` needs proj_dim = their projection_dim. A
CLIPModel's text tower is not read.
"""

from vidtx.weights import Source, tables

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
               convert=_convert)
