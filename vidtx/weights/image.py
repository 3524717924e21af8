"""Image checkpoints into a one-frame image model (a ViT, or a 2-D ResNet), which init_from
inflates into a video model (`vidtx.checkpoint.init_from`, `vidtx.weights.inflate`): a family
whose record has an `image_model` (the one-frame model it starts from) takes one.

- `VIT`: an HF image ViT (`ViTForImageClassification`, `vit.`; or `ViTModel`, the same names
  without `vit.`, e.g. google/vit-base-patch16-224) into the family's image model (one-frame
  tubelets 1 x h x w, a CLS token, learned positions, the config's width, depth and heads). A
  `ViTModel` has no classifier and gives no head; its pooler is not used.
- `CLIP`: an HF CLIP tower (`vidtx.weights.clip`) into the same ViT with CLIP's conventions
  (`clip_style=True`: ln_pre as the encoder's `norm_pre`, QuickGELU, LayerNorm eps 1e-5), ln_post
  as its `norm`, no head; the visual projection and a CLIPModel's text tower are not used. It
  fills a video model with model.clip_style=True.
- `RESNET`: a torchvision or timm 2-D ResNet (`torchvision.models.resnet50`, timm `resnet50`:
  `conv1`, `bn1`, `layer<i>.<j>.conv1` ... `downsample.0`, `fc`; BatchNorm statistics
  included) into the resnet3d family's image model: every temporal kernel 1 (a Conv2d weight is
  a one-frame kernel), the config's widths and blocks. Its stem (7x7 conv, BatchNorm, ReLU,
  3x3 max pool, both stride 2) and bottlenecks (stride in the 3x3 conv: ResNet v1.5) are the
  resnet3d's at one frame.
An HF directory's config.json is read against the image model (`vidtx.weights.settings`), whose
size and classes come from the checkpoint: the rest must agree with the video config.
"""

import math

import ml_collections
from flax import nnx

from vidtx import weights
from vidtx.weights import clip, files, settings, tables, vivit

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


# transformers.ViTConfig's fields and defaults.
VIT_CONFIG = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True,
    "encoder_stride": 16, "pooler_output_size": None, "pooler_act": "tanh",
}


def _video_patch(p: int) -> str:
  """The video config's patch size for image patches p x p: its frames stay the config's."""
  return f"(t, {p}, {p})"


def _check_vit_settings(s: settings.Settings, model) -> None:
  """An HF ViT config against the one-frame image model. Its size is the checkpoint's position
  table's; encoder_stride is ViTForMaskedImageModeling's decoder's; the pooler is not used."""
  s.skip(*settings.DROPOUT_AND_INIT, "image_size", "encoder_stride", "pooler_output_size",
         "pooler_act")
  encoder = model.encoder
  _, p, pw = encoder.patch_embed.patch
  settings.check_rgb(s)
  s.agree("patch_size", settings.square((p, pw)), "model.patch_size",
          fix=_video_patch(s["patch_size"]))
  settings.check_blocks(s, encoder.blocks)
  s.require("qkv_bias", (True,), f"our one-frame {s.model} has q, k and v biases")


def _check_clip_settings(s: settings.Settings, model) -> None:
  """An HF CLIP config against the one-frame clip_style image model (no projection)."""
  clip.check_settings(s, patch=model.encoder.patch_embed.patch, blocks=model.encoder.blocks,
                      patch_fix=_video_patch)


VIT = weights.Source(
    name="HF image ViT", keys="'vit.embeddings...' or 'embeddings.patch_embeddings...'",
    # A SwinModel's keys start alike.
    detect=lambda keys: (any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings."))
                             for k in keys)
                         and not any(k.endswith("relative_position_bias_table") for k in keys)),
    convert=_convert_vit,
    hf_settings=settings.HFConfig({"vit": VIT_CONFIG}, _check_vit_settings))
CLIP = weights.Source(name=clip.TOWER.name, keys=clip.TOWER.keys, detect=clip.detect,
                      convert=_convert_clip,
                      hf_settings=settings.HFConfig(clip.MODEL_TYPES, _check_clip_settings))
# A torchvision / timm Bottleneck: conv1 (1x1), conv2 (3x3, strided), conv3 (1x1), each with its
# BatchNorm; downsample = Conv2d 1x1 and BatchNorm where the shape changes.
RESNET_BLOCK = {
    "a/conv": "conv1", "a/norm": "bn1", "b/conv": "conv2", "b/norm": "bn2",
    "c/conv": "conv3", "c/norm": "bn3",
    "shortcut/conv": "downsample.0", "shortcut/norm": "downsample.1",
}


def _convert_resnet(reader, target, model):
  del model
  if "fc.weight" not in reader.arrays:
    del target["head"]  # a backbone without its classifier (timm's num_classes=0)
  out = tables.walk(reader, {"stem/conv": "conv1", "stem/norm": "bn1", "head": "fc"}, target)
  out["stages"] = {i: tables.Blocks(f"layer{i + 1}.{{}}", RESNET_BLOCK).read(
      reader, "", stage, f"stages/{i}") for i, stage in target["stages"].items()}
  return out


RESNET = weights.Source(
    name="torchvision/timm ResNet", keys="'conv1.weight', 'bn1...', 'layer1.0.conv1...', 'fc...'",
    detect=lambda keys: "conv1.weight" in keys and "layer1.0.conv1.weight" in keys,
    convert=_convert_resnet)
SOURCES = (VIT, CLIP, RESNET)
# The part of an image model each source fills: a ViT's encoder, a ResNet's stages. A family's
# image model takes the sources whose part it has.
_FILLS = {VIT.name: "encoder", CLIP.name: "encoder", RESNET.name: "stages"}


def convert(state_dict, model_config: ml_collections.ConfigDict, image_model,
            hf_config: dict | None = None) -> dict:
  """Our params of the one-frame image model of an HF image ViT or CLIP tower, or of a 2-D
  ResNet, for `vidtx.checkpoint.init_from` to inflate. `image_model(model_config, side,
  num_classes, clip_style, rngs)` is the video family's (`Family.image_model`): its width, depth,
  heads and patch size (a ResNet's widths and blocks) come from `model_config` (the video
  model's), its side x side patches (a ViT's; 1 for a ResNet) and classes from the checkpoint.
  `hf_config`: the HF directory's config.json, read against the image model (None: names and
  shapes only). Raises ValueError like `vidtx.weights.convert`, and for a checkpoint of another
  kind of image model than the family's."""
  state_dict = files.strip_wrappers(state_dict)
  source = weights.find_source(state_dict, SOURCES)
  if source is None:
    raise ValueError(f"not an image checkpoint (keys e.g. {sorted(state_dict)[:5]}): expected "
                     + " or ".join(f"{s.name} ({s.keys})" for s in SOURCES))
  if source is CLIP:
    positions = files.to_numpy(state_dict[clip.POSITIONS]).shape[0] - 1
    classifier = None
  elif source is RESNET:
    positions = 1  # a CNN has no patch grid
    classifier = state_dict.get("fc.weight")
  else:
    prefix = _vit_prefix(state_dict)
    positions = files.to_numpy(
        state_dict[f"{prefix}embeddings.position_embeddings"]).shape[1] - 1
    classifier = state_dict.get("classifier.weight")
  num_classes = 1 if classifier is None else files.to_numpy(classifier).shape[0]
  model = nnx.eval_shape(lambda: image_model(model_config, math.isqrt(positions), num_classes,
                                             source is CLIP, nnx.Rngs(0)))
  takes = [s.name for s in SOURCES if hasattr(model, _FILLS[s.name])]
  if source.name not in takes:
    raise ValueError(f"model.name={model_config.name!r} starts from {' or '.join(takes)} "
                     f"image checkpoints, not a {source.name} (keys e.g. "
                     f"{sorted(state_dict)[:3]})")
  return weights.convert(state_dict, model, (source,), hf_config=hf_config)
