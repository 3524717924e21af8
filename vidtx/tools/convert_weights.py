"""Converts a PyTorch checkpoint into parameters a training run starts from.

  python -m vidtx.tools.convert_weights --config=configs/<file>.py[:variant] [--config.x=y] \\
      --checkpoint=<.pth/.bin/.safetensors file or HF save_pretrained directory> --out=<directory>

then train or evaluate with --config.init_from=<directory>.

The config's model family (`vidtx.models.family`) lists the checkpoint layouts it converts
from (`Family.converters`, `vidtx.weights`: VideoMAE and MAR for vit and mae, TimeSformer,
ViViT, VTN, CLIP for ILA's tower, Swin for TPS, torchvision's video models for r2plus1d and
s3d, torchvision and PySlowFast MViT for mvit, pytorchvideo's Slow and I3D for resnet3d); the
layout is detected from the keys. The
checkpoint is converted into the config's model (built abstractly: ViT-H costs no memory here)
and must fit it exactly: every key used, every parameter and BatchNorm statistic filled. To
fine-tune from a pre-training checkpoint, convert it with the pre-training config (the same
sizes) and point the fine-tuning run's init_from at the result: init_from copies the encoder by
name and shape into a classifier or a MAR model, and starts the rest (head, bridging
classifier) fresh. A checkpoint that fills only a part of the model (an HF CLIP tower for
ILA's `clip/`, an HF Longformer for VTN's temporal encoder) is written as that part; the run's
init_from copies it and keeps the rest fresh.

A family that starts from images (`Family.image_model`) also takes an image checkpoint
(`vidtx.weights.image`): an HF ViT (`ViTForImageClassification` or `ViTModel`, e.g.
google/vit-base-patch16-224), or an HF CLIP tower (`CLIPModel`, e.g.
openai/clip-vit-base-patch16, or `CLIPVisionModel*`) for a config with model.clip_style=True,
becomes a one-frame ViT of the config's width, depth, heads and patch size; a video run's
init_from then inflates it (vidtx.weights.inflate: kernels over the tubelet's frames, position
embeddings resized and tiled over time, a temporal attention from the spatial one; for VTN the
ViT is the per-frame backbone).
A torchvision or timm ResNet-50 state dict becomes resnet3d's one-frame 2-D ResNet (the config's
widths and blocks, every temporal kernel 1), whose kernels init_from inflates over each conv's
frames ("central": every frame passes the 2-D network alone, so a still clip gives the image's
logits).

An HF directory's config.json is read too (`vidtx.weights.settings`): a setting the model
computes differently (an activation, a norm's epsilon, the pooling) is refused by name, or
honoured where the config has a field for it (HF VideoMAE's use_mean_pooling=False is
model.vit.pool="first"). A checkpoint the family does not convert from is refused, naming the
families whose converters know its keys.
"""

import os

import ml_collections
from absl import flags
from flax import nnx

from vidtx import checkpoint, cli, configuration, errors, models, weights
from vidtx.models import layers
from vidtx.weights import files, image


def convert(config: ml_collections.ConfigDict, checkpoint_path: str, out: str) -> dict:
  """Converts `checkpoint_path` into `config`'s model and writes it to `out` for init_from.

  Returns the converted pure dict (parameters and statistics). Raises ValueError naming every
  key or parameter that does not fit, errors.FlagError for a file that is no checkpoint, and
  refuses to overwrite a non-empty `out`.
  """
  configuration.validate(config, num_devices=1, num_processes=1)
  if os.path.isdir(out) and os.listdir(out):
    raise errors.FlagError(f"--out={out!r} is not empty: give a new directory")
  cli.check_writable("out", out)  # before the conversion, which may take minutes
  family = models.family(config.model)
  state_dict = _read(checkpoint_path)
  hf_config = files.load_hf_config(checkpoint_path)
  if weights.find_source(state_dict, family.converters):
    # Abstract: only the shapes are needed, so even ViT-H costs no memory here.
    model = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
    params = weights.convert(state_dict, model, family.converters, hf_config=hf_config)
  elif family.image_model and weights.find_source(state_dict, image.SOURCES):
    # A one-frame image model, inflated to video by init_from.
    if weights.find_source(state_dict, (image.CLIP,)) and not config.model.clip_style:
      raise ValueError(_clip_style_message(state_dict))
    params = image.convert(state_dict, config.model, family.image_model, hf_config=hf_config)
  else:
    raise ValueError(_unknown_message(state_dict, config.model.name, family))
  checkpoint.save_params(out, params)
  return params


def _read(checkpoint_path: str) -> dict:
  """files.load_state_dict, where a file that is no checkpoint raises errors.FlagError."""
  try:
    return files.load_state_dict(checkpoint_path)
  except (ValueError, OSError):
    raise  # they name the file and the fix
  except Exception as e:  # pylint: disable=broad-exception-caught
    # What torch.load or safetensors raise on other bytes depends on the bytes.
    reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "no data"
    raise errors.FlagError(f"--checkpoint={checkpoint_path}: not a PyTorch checkpoint "
                           f"({type(e).__name__}: {reason})") from e


def _families_converting(state_dict) -> list[str]:
  """The model.name of each family whose converters know the state dict's keys."""
  return [name for name, f in models.FAMILIES.items()
          if weights.find_source(state_dict, f.converters)]


def _clip_style_message(state_dict) -> str:
  styled = [name for name, f in models.FAMILIES.items()
            if f.image_model and "clip_style" in f.reads]
  towers = _families_converting(state_dict)
  return ("an HF CLIP checkpoint fills a model with CLIP's conventions: set "
          f"--config.model.clip_style=True (model.name in {styled})"
          + (f", or use model.name in {towers}" if towers else ""))


def _unknown_message(state_dict, name, family) -> str:
  listed = lambda sources: "; ".join(f"{s.name} ({s.keys})" for s in sources)
  message = (f"model.name={name!r} does not convert this checkpoint (keys e.g. "
             f"{sorted(state_dict)[:5]}): it converts from {listed(family.converters) or 'none'}")
  if family.image_model:
    message += f", and into a one-frame image model from {listed(image.SOURCES)}"
  others = _families_converting(state_dict)
  if others:
    message += f". Its keys fit model.name in {others}: convert it with such a config"
  return message


def main(argv):
  del argv
  f = flags.FLAGS
  config = f.config
  params = convert(config, f.checkpoint, f.out)
  out = os.path.abspath(f.out)
  print(f"converted {f.checkpoint} into model {config.model.name} ({config.model.size}): "
        f"{layers.count_params(params):,} parameters written to {out}")
  print(f"use it with: --config.init_from={out}")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing tools side by side works."""
  cli.define_config("Experiment config file[:variant].", flag_values)
  flags.DEFINE_string("checkpoint", None, "PyTorch .pth/.bin/.safetensors file or HF directory.",
                      flag_values=flag_values)
  flags.DEFINE_string("out", None, "Directory to write the converted parameters to.",
                      flag_values=flag_values)
  flags.mark_flags_as_required(["config", "checkpoint", "out"], flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  # A conversion's ValueErrors name what in the checkpoint does not fit the config.
  cli.run(main, user_errors=(ValueError,))
