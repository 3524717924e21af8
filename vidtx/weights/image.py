"""Image checkpoints into a one-frame ViT, which init_from inflates into a video model
(`vidtx.checkpoint.init_from`, `vidtx.weights.inflate`): a family whose record has an
`image_model` (the one-frame model it starts from) takes one.

- `VIT`: an HF image ViT (`ViTForImageClassification`, `vit.`; or `ViTModel`, the same names
  without `vit.`, e.g. google/vit-base-patch16-224) into the family's image model (one-frame
  tubelets 1 x h x w, a CLS token, learned positions, the config's width, depth and heads). A
  `ViTModel` has no classifier and gives no head; its pooler is not used.
- `CLIP`: an HF CLIP tower (`vidtx.weights.clip`) into the same ViT with CLIP's conventions
  (`clip_style=True`: ln_pre as the encoder's `norm_pre`, QuickGELU, LayerNorm eps 1e-5), ln_post
  as its `norm`, no head; the visual projection and a CLIPModel's text tower are not used. It
  fills a video model with model.clip_style=True.
"""

import math

import ml_collections
from flax import nnx

from vidtx import weights
from vidtx.weights import clip, files, tables, vivit

# Under "vit." in a ViTForImageClassification; the classifier is "classifier".
VIT_TABLE = {
    "encoder": {
        "patch_embed": "embeddings.patch_embeddings.projection",
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "blocks": tables.Blocks("encoder.layer.{}", vivit.HF_BLOCK),
    },
    "norm": "layernorm",
}


def _vit_prefix(keys) -> str:
  return "vit." if any(k.startswith("vit.") for k in keys) else ""


def _convert_vit(reader, target, model):
  del model
  if "classifier.weight" not in reader.arrays:
    del target["head"]  # a ViTModel
  prefix = _vit_prefix(reader.arrays)
  out = tables.walk(reader, VIT_TABLE, target, prefix=prefix)
  out.update(tables.walk(reader, {"head": "classifier"}, target))
  reader.consume_prefixed(f"{prefix}pooler.")
  return out


def _convert_clip(reader, target, model):
  del model
  del target["head"]  # CLIP has none
  out = tables.walk(reader, {"encoder": clip.EMBEDDING_AND_BLOCKS,
                             "norm": "vision_model.post_layernorm"}, target)
  clip.consume_unused(reader)
  reader.consume(clip.PROJECTION)  # into CLIP's joint space, which a classifier does not use
  return out


VIT = weights.Source(
    name="HF image ViT", keys="'vit.embeddings...' or 'embeddings.patch_embeddings...'",
    # A SwinModel's keys start alike.
    detect=lambda keys: (any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings."))
                             for k in keys)
                         and not any(k.endswith("relative_position_bias_table") for k in keys)),
    convert=_convert_vit)
CLIP = weights.Source(name=clip.TOWER.name, keys=clip.TOWER.keys, detect=clip.detect,
                      convert=_convert_clip)
SOURCES = (VIT, CLIP)


def convert(state_dict, model_config: ml_collections.ConfigDict, image_model) -> dict:
  """Our params of the one-frame image model of an HF image ViT or CLIP tower, for
  `vidtx.checkpoint.init_from` to inflate. `image_model(model_config, side, num_classes,
  clip_style, rngs)` is the video family's (`Family.image_model`): its width, depth, heads and
  patch size come from `model_config` (the video model's), its side x side patches and classes
  from the checkpoint. Raises ValueError like `vidtx.weights.convert`."""
  state_dict = files.strip_wrappers(state_dict)
  source = weights.find_source(state_dict, SOURCES)
  if source is None:
    raise ValueError(f"not an image checkpoint (keys e.g. {sorted(state_dict)[:5]}): expected "
                     + " or ".join(f"{s.name} ({s.keys})" for s in SOURCES))
  if source is CLIP:
    positions = files.to_numpy(state_dict[clip.POSITIONS]).shape[0] - 1
    classifier = None
  else:
    prefix = _vit_prefix(state_dict)
    positions = files.to_numpy(
        state_dict[f"{prefix}embeddings.position_embeddings"]).shape[1] - 1
    classifier = state_dict.get("classifier.weight")
  num_classes = 1 if classifier is None else files.to_numpy(classifier).shape[0]
  model = nnx.eval_shape(lambda: image_model(model_config, math.isqrt(positions), num_classes,
                                             source is CLIP, nnx.Rngs(0)))
  return weights.convert(state_dict, model, (source,))
