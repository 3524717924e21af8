"""Model registry: `config.model.name` -> constructor(model_config, data_config, rngs).

Every model is called as `model(video, train=, key=, keep=) -> (logits or None, aux)`; see
`vidtx.models.vit` for the contract.
"""

from vidtx.models import ila, mae, timesformer, tps, vit, vivit, vtn

MODELS = {
    "vit": vit.build,
    "mae": mae.build,
    "timesformer": timesformer.build,
    "vivit": vivit.build,
    "ila": ila.build,
    "vtn": vtn.build,
    "tps": tps.build,
}
# The values of config.model.attention each model takes.
ATTENTIONS = {
    "vit": ("joint", "patch_shift"),  # patch_shift: TPS in ViT blocks, without masking
    "mae": ("joint",),
    "timesformer": timesformer.ATTENTIONS,
    "vivit": vivit.ATTENTIONS,
    "ila": ("space_only",),  # CLIP encodes each frame apart; ILA modules connect them
    "vtn": ("space_only",),  # a ViT per frame; a Longformer over the frames connects them
    "tps": tps.ATTENTIONS,  # patch_shift: TPS; space_only: the same Swin without the shifts
}
# Models that take masked tokens (config.model.masking); the others see every token.
MASKABLE = ("vit", "mae")


def build(model_config, data_config, rngs):
  if model_config.name not in MODELS:
    raise ValueError(f"config.model.name={model_config.name!r} is not a known model; "
                     f"choose one of {sorted(MODELS)}")
  return MODELS[model_config.name](model_config, data_config, rngs)


def classifies(model_config) -> bool:
  """False for pre-training models, which output no logits (only a reconstruction loss)."""
  return not (model_config.name == "mae" and model_config.classifier == "none")
