"""The record each model file exports as `FAMILY`: everything vidtx needs to know of a model
family, so that the training loop, the config checks, the optimizer, init_from and the tools
never name a family.

Adding a family: one model file with its `FAMILY`, one entry in `vidtx.models.FAMILIES`, its
configs and its tests (the contract test in tests/models/test_families.py runs every family).
"""

import dataclasses
from collections.abc import Callable, Mapping

import ml_collections

from vidtx import errors

# The fields of config.model that the shared machinery reads (sizes, attention, masking,
# precision, ...), each documented in `vidtx.configuration.base`. A family lists those it reads
# in `Family.reads`; the others must keep their defaults, so a field that would be silently
# ignored is an error at start.
SHARED_FIELDS = ("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
                 "clip_style", "attention", "remat", "drop_path", "head_dropout",
                 "head_init_scale", "dtype", "masking", "mask_ratio")


def _no_checks(config: ml_collections.ConfigDict) -> None:
  del config


def _always(model_config: ml_collections.ConfigDict) -> bool:
  del model_config
  return True


def _same_name(name: str) -> tuple[str, ...]:
  return (name,)


def _never(name: str, names: frozenset) -> bool:
  del name, names
  return False


def encoder_block_layer(names: tuple[str, ...], depth: int) -> int:
  """Layer-wise lr decay's layer of a parameter (its path's names) in a model whose encoder
  numbers its blocks encoder/blocks/<i> (vit.Encoder): 0 for the rest of the encoder (the
  embeddings), i + 1 for block i, depth + 1 for everything after the encoder."""
  if names and names[0] == "encoder":
    if len(names) > 2 and names[1] == "blocks":
      return int(names[2]) + 1
    if len(names) > 1 and names[1] != "blocks":
      return 0
  return depth + 1


def check_stages(config: ml_collections.ConfigDict, name: str, max_stages: int | None,
                 stages: Callable[[], tuple]) -> None:
  """The checks of a convolutional family's stage overrides, config.model.<name>.stage_widths and
  stage_blocks: () or positive ints, one per stage (at most `max_stages`; None: any number);
  then `stages()`, the (widths, blocks per stage) they give, must have as many widths as
  blocks. Raises errors.ConfigError naming the field."""
  s = config.model[name]
  at_most = f" (at most {max_stages})" if max_stages else ""
  for field, example in (("stage_widths", (16, 32, 64, 128)), ("stage_blocks", (1, 1, 1, 1))):
    value = s[field]
    if value != () and not (isinstance(value, (tuple, list)) and 0 < len(value) <= (
        max_stages or len(value)) and all(isinstance(v, int) and v >= 1 for v in value)):
      errors.fail(f"model.{name}.{field}", value, f"give positive ints, one per stage{at_most}, "
                  f"e.g. {example[:max_stages]}, or () for the size's")
  widths, blocks = stages()
  if len(widths) != len(blocks):
    field = "stage_blocks" if s.stage_blocks else "stage_widths"
    errors.fail(f"model.{name}.{field}", s[field], f"needs one entry per stage: the widths are "
                f"{widths} and the blocks per stage {blocks}; set both model.{name}.stage_widths "
                f"and model.{name}.stage_blocks")


def _logits(model, video):
  return model(video, train=False)[0]


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family.

  Every model is called as `model(video, train=, key=, keep=) -> (logits or None, aux)`: video
  [B, T, H, W, 3]; logits [B, classes] float32 (None for a model that only pre-trains); aux a
  dict of per-example [B] float32 extras, where "loss" is an already weighted loss term the
  train step adds and the rest are logged. Running statistics (BatchNorm) are `nnx.BatchStat`
  variables, which the train step updates and checkpoints carry.
  """
  name: str  # config.model.name
  # (model_config, data_config, rngs) -> the model (an nnx.Module).
  build: Callable
  # config.model.size -> the size's dimensions (the family's own tuple).
  sizes: Mapping[str, tuple]
  # The SHARED_FIELDS of config.model it reads; the others must keep their defaults.
  reads: tuple[str, ...]
  # () -> the defaults of its own section config.model.<name>, each field documented where it
  # is set. None: no section.
  section: Callable[[], ml_collections.ConfigDict] | None = None
  # (config) -> None: its own checks of its section and of how the shared fields combine for it,
  # raising errors.ConfigError naming the field and the fix.
  check: Callable[[ml_collections.ConfigDict], None] = _no_checks
  # The values of config.model.attention it takes (when "attention" is in `reads`).
  attentions: tuple[str, ...] = ()
  # Whether it cuts clips into model.patch_size tubelets, which must then tile the clip.
  tubelets: bool = False
  # Whether it takes clips of any size (convolutions and an average pool, no position tables), so
  # that evaluation may crop larger than training does (config.data.eval_crop_size); its head
  # may pool windows of the training clip's final map there (layers.window_average).
  any_crop: bool = False
  # (model_config) -> whether the model outputs logits (False: pre-training only); and, for the
  # messages of the tools that need logits, how a config of the family gets them.
  classifies: Callable[[ml_collections.ConfigDict], bool] = _always
  logits_fix: str = ""
  # Layer-wise lr decay (vidtx.optim): (model_config) -> the number of blocks L, None where the
  # family does not support it; and (a parameter's path names, L) -> its layer: 0 for the
  # embeddings, i + 1 for block i, L + 1 for what follows the blocks.
  layer_decay_depth: Callable[[ml_collections.ConfigDict], int] | None = None
  layer_of: Callable[[tuple[str, ...], int], int] = encoder_block_layer
  # vidtx.weights.Source's this family converts PyTorch checkpoints from (convert_weights).
  converters: tuple = ()
  # (model_config, side, num_classes, clip_style, rngs) -> the one-frame image model that
  # init_from inflates into this family's (convert_weights writes an HF image ViT or CLIP tower,
  # or a 2-D ResNet, as one; see vidtx.weights.image and vidtx.weights.inflate); None: no image
  # starts. A ViT's takes side x side patches; a CNN's ignores side and clip_style.
  image_model: Callable | None = None
  # init_from's name rules: (parameter name) -> the checkpoint names that may initialise it, in
  # order of preference; and (parameter name, checkpoint names) -> whether it starts at zero
  # instead (see vidtx.weights.inflate).
  init_names: Callable[[str], tuple[str, ...]] = _same_name
  init_zero: Callable[[str, frozenset], bool] = _never
  # Attention rollout (vidtx.tools.visualize_attention): the attentions under which every
  # attention step mixes the same tokens of one clip, and (model, clips) -> the logits (or None)
  # of the inference whose attention is pictured.
  rollout_attentions: tuple[str, ...] = ()
  rollout_forward: Callable = _logits
  # (model, video [B, T, H, W, 3], visible tokens [B, K]) -> (the predicted per-tubelet
  # normalised pixels [B, M, pt*ph*pw*3] of the M masked tubelets, their token indices [B, M]),
  # which vidtx.tools.visualize_masks pictures; None: the family reconstructs nothing.
  reconstruct: Callable | None = None

  def __post_init__(self):
    unknown = set(self.reads) - set(SHARED_FIELDS)
    if unknown:
      raise ValueError(f"family {self.name!r} reads unknown shared fields {sorted(unknown)}; "
                       f"the shared ones are {SHARED_FIELDS}")

  @property
  def maskable(self) -> bool:
    """Whether it takes masked tokens (config.model.masking)."""
    return "masking" in self.reads
