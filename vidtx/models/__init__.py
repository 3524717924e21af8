"""Model registry: `config.model.name` -> constructor(model_config, data_config, rngs)."""

from vidtx.models import vit

MODELS = {
    "vit": vit.build,
}


def build(model_config, data_config, rngs):
  if model_config.name not in MODELS:
    raise ValueError(f"config.model.name={model_config.name!r} is not a known model; "
                     f"choose one of {sorted(MODELS)}")
  return MODELS[model_config.name](model_config, data_config, rngs)
