"""The model families: `FAMILIES` maps config.model.name to each model file's `FAMILY` record
(`vidtx.models.family.Family`), the only registry of models.

Every model is called as `model(video, train=, key=, keep=) -> (logits or None, aux)`; see
`vidtx.models.family.Family` for the contract.
"""

import jax.numpy as jnp
import ml_collections

from vidtx import errors
from vidtx.models import (cnn3d, ila, layers, mae, masking, mvit, r2plus1d, s3d, timesformer,
                          tps, vit, vivit, vtn)
from vidtx.models import x3d
from vidtx.models import resnet3d
from vidtx.models import slowfast
from vidtx.models.family import SHARED_FIELDS, Family

FAMILIES: dict[str, Family] = {f.name: f for f in (
    vit.FAMILY, mae.FAMILY, timesformer.FAMILY, vivit.FAMILY, ila.FAMILY, vtn.FAMILY, tps.FAMILY,
    cnn3d.FAMILY, r2plus1d.FAMILY, s3d.FAMILY, mvit.FAMILY,
    x3d.FAMILY,
    resnet3d.FAMILY,
    slowfast.FAMILY,
)}


def family(model_config: ml_collections.ConfigDict) -> Family:
  """The family of config.model.name; a ConfigError naming the choices for an unknown one."""
  if model_config.name not in FAMILIES:
    errors.fail("model.name", model_config.name, f"choose one of {sorted(FAMILIES)}")
  return FAMILIES[model_config.name]


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs):
  """The model of config.model (an nnx.Module), for clips of config.data, its BatchNorm layers
  set by config.model.bn."""
  model = family(model_config).build(model_config, data_config, rngs)
  if not layers.configure_batchnorm(model, model_config.bn):
    for field, default in batchnorm_section().items():
      if model_config.bn[field] != default:
        errors.fail(f"model.bn.{field}", model_config.bn[field], f"model.name="
                    f"{model_config.name!r} has no BatchNorm layers: leave it at {default!r}")
  return model


def batchnorm_section() -> ml_collections.ConfigDict:
  """config.model.bn: the BatchNorm layers (vidtx.models.layers.BatchNorm) of the convolutional
  families; a family without them refuses a change here."""
  s = ml_collections.ConfigDict()
  # Running-average momentum (PyTorch's convention: the weight of the new batch) and epsilon;
  # None: the family's own, those of the reference it follows (mostly 0.1 and 1e-5).
  s.momentum = ml_collections.config_dict.placeholder(float)
  s.eps = ml_collections.config_dict.placeholder(float)
  # Statistics in training over groups of this many consecutive clips of the (micro-)batch,
  # each group normalised on its own (PySlowFast's BN.NUM_SYNC_DEVICES x clips per device: 8
  # clips); 0: over the global batch, which jit computes across the devices.
  s.group_size = 0
  # Training normalises with the running statistics and never updates them (detection,
  # fine-tuning on little data); scales and biases still train (freeze them with
  # optim.frozen).
  s.frozen = False
  # Precise BN (PySlowFast): before each evaluation, the running statistics are replaced by the
  # population statistics of the model's BatchNorm inputs over this many training batches
  # (augmented as in training); the saved checkpoint of that step holds them. 0: off.
  s.precise_batches = 0
  return s


def check_batchnorm(config: ml_collections.ConfigDict) -> None:
  """The checks of config.model.bn (ConfigError naming the field)."""
  bn = config.model.bn
  if bn.momentum is not None and not 0 < bn.momentum <= 1:
    errors.fail("model.bn.momentum", bn.momentum, "must be in (0, 1], or None for the family's")
  if bn.eps is not None and not bn.eps > 0:
    errors.fail("model.bn.eps", bn.eps, "must be > 0, or None for the family's")
  micro_batch = config.batch_size // max(config.grad_accum_steps, 1)
  if not isinstance(bn.group_size, int) or bn.group_size < 0 or (
      bn.group_size and micro_batch % bn.group_size):
    errors.fail("model.bn.group_size", bn.group_size, f"give 0 (the whole batch) or a number "
                f"of clips that divides the batch of each forward pass, {micro_batch} "
                "(batch_size / grad_accum_steps)")
  if not isinstance(bn.precise_batches, int) or bn.precise_batches < 0:
    errors.fail("model.bn.precise_batches", bn.precise_batches, "give a number of batches "
                "(PySlowFast: 200), or 0 for off")
  if bn.frozen and bn.precise_batches:
    errors.fail("model.bn.precise_batches", bn.precise_batches, "frozen BatchNorm keeps its "
                "statistics: set model.bn.frozen=False or precise_batches=0")


def classifies(model_config: ml_collections.ConfigDict) -> bool:
  """False for pre-training models, which output no logits (only a reconstruction loss)."""
  return family(model_config).classifies(model_config)


def sections() -> ml_collections.ConfigDict:
  """config.model's family sections, each with its defaults (for `configuration.base`)."""
  c = ml_collections.ConfigDict()
  for f in FAMILIES.values():
    if f.section is not None:
      c[f.name] = f.section()
  return c


def check_config(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """The checks of config.model: the shared fields where they mean something for the family,
  and the family's own. `defaults` is the base config: a shared field the family does not read,
  and every field of another family's section, must keep its default there (a setting that
  would be silently ignored stops the run). Raises errors.ConfigError naming the field."""
  m, d = config.model, config.data
  f = family(m)
  if m.size not in f.sizes:
    errors.fail("model.size", m.size, f"choose one of {list(f.sizes)} for model.name={m.name!r}")
  if m.masking != "none" and not f.maskable:
    maskable = tuple(name for name, other in FAMILIES.items() if other.maskable)
    errors.fail("model.masking", m.masking, f"model.name={m.name!r} sees every token: set "
                f"model.masking='none' (masking works with {maskable})")
  for field in SHARED_FIELDS:
    if field not in f.reads and m[field] != defaults.model[field]:
      errors.fail(f"model.{field}", m[field], f"model.name={m.name!r} does not read it: leave "
                  f"it at {defaults.model[field]!r}")
  for other in FAMILIES.values():
    if other is not f and other.section is not None:
      for field, value in m[other.name].items():
        if value != defaults.model[other.name][field]:
          errors.fail(f"model.{other.name}.{field}", value, f"model.name={m.name!r} does not "
                      f"read the {other.name} section: leave it at "
                      f"{defaults.model[other.name][field]!r}")
  if "attention" in f.reads and m.attention not in f.attentions:
    errors.fail("model.attention", m.attention, f"model.name={m.name!r} takes one of "
                f"{f.attentions}")
  if m.remat not in layers.REMAT:
    errors.fail("model.remat", m.remat, f"choose one of {layers.REMAT}")
  try:
    jnp.dtype(m.dtype)
  except TypeError:
    errors.fail("model.dtype", m.dtype, "use 'float32' or 'bfloat16'")
  if not 0 <= m.drop_path < 1:
    errors.fail("model.drop_path", m.drop_path, "must be in [0, 1)")
  if not 0 <= m.head_dropout < 1:
    errors.fail("model.head_dropout", m.head_dropout, "must be in [0, 1)")
  check_batchnorm(config)
  if d.eval_crop_size and d.eval_crop_size != d.crop_size and not f.any_crop:
    errors.fail("data.eval_crop_size", d.eval_crop_size, f"model.name={m.name!r} evaluates "
                "clips of its training crop only: leave it at 0")
  f.check(config)  # first: its message names the fix for the family (e.g. (1, p, p) patches)
  if f.tubelets:
    if len(m.patch_size) != 3:
      errors.fail("model.patch_size", m.patch_size, "give (t, h, w)")
    pt, ph, pw = m.patch_size
    if d.num_frames % pt:
      errors.fail("data.num_frames", d.num_frames,
                  f"must be divisible by the tubelet's time size model.patch_size[0]={pt}")
    if d.crop_size % ph or d.crop_size % pw:
      errors.fail("data.crop_size", d.crop_size,
                  f"must be divisible by the tubelet's spatial size {ph}x{pw} (model.patch_size)")
  if m.masking not in masking.SCHEDULES:
    errors.fail("model.masking", m.masking, f"choose one of {sorted(masking.SCHEDULES)}")
  if not 0 <= m.mask_ratio < 1:
    errors.fail("model.mask_ratio", m.mask_ratio, "must be in [0, 1)")
  if m.masking == "cell_running":
    try:
      masking.cell_running(None, masking.token_grid(m, d), m.mask_ratio)
    except ValueError as e:
      errors.fail("model.mask_ratio", m.mask_ratio, str(e))

