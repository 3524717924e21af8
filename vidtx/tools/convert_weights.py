"""Converts a PyTorch VideoMAE / MAR checkpoint into parameters a training run starts from.

  python -m vidtx.tools.convert_weights --config=configs/<file>.py[:variant] [--config.x=y] \\
      --checkpoint=<.pth file or HF save_pretrained directory> --out=<directory>

then train or evaluate with --config.init_from=<directory>. The checkpoint's layout (HF
transformers, official VideoMAE, MAR) is detected from its keys (`vidtx.models.convert`).

The checkpoint is converted into the config's model and must fit it exactly: every key used,
every parameter filled. To fine-tune from a pre-training checkpoint, convert it with the
pre-training config (model.name="mae", classifier="none", the same sizes) and point the
fine-tuning run's init_from at the result: init_from copies the encoder by name and shape into
a "vit" classifier or a MAR model, and starts the rest (head, bridging classifier) fresh.

An HF image ViT (`ViTForImageClassification` or `ViTModel`, e.g. google/vit-base-patch16-224)
is converted into a one-frame ViT of the config's width, depth, heads and patch size; a video
run's init_from then inflates it (vidtx.checkpoint.init_from: kernels over the tubelet's frames,
position embeddings resized and tiled over time, TimeSformer's temporal attention from the
spatial one, ViViT model 3's with a zero output projection). For VTN (configs/vtn_k400.py)
that ViT is the per-frame backbone; PySlowFast's VTN checkpoints convert directly.

An HF CLIP checkpoint (`CLIPModel`, e.g. openai/clip-vit-base-patch16, or `CLIPVisionModel*`)
converted with an ILA config (configs/ila_k400.py) fills only the CLIP tower (`clip/...`); the
run's init_from copies it and starts the ILA modules and the head fresh. Converted with a vit or
timesformer config with model.clip_style=True, it becomes a one-frame CLIP-style ViT that
init_from inflates as above.
"""

import os

import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from vidtx import checkpoint, configuration, models
from vidtx.models import convert as convert_lib
from vidtx.models import layers


def convert(config: ml_collections.ConfigDict, checkpoint_path: str, out: str) -> dict:
  """Converts `checkpoint_path` into `config`'s model and writes it to `out` for init_from.

  Returns the converted pure param dict. Raises ValueError naming every key or parameter that
  does not fit, and refuses to overwrite a non-empty `out`.
  """
  configuration.validate(config, num_devices=1, num_processes=1)
  if os.path.isdir(out) and os.listdir(out):
    raise ValueError(f"--out={out!r} is not empty: give a new directory")
  # Abstract: only the shapes are needed, so even ViT-H costs no memory here.
  state_dict = convert_lib.load_state_dict(checkpoint_path)
  if convert_lib.is_image_vit(state_dict):  # a 2-D ViT, inflated to video by init_from
    params = convert_lib.convert_image_vit(state_dict, config.model)
  elif convert_lib.is_clip(state_dict) and config.model.name != "ila":  # likewise, CLIP's
    params = convert_lib.convert_clip_image_vit(state_dict, config.model)
  else:
    model = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
    params = convert_lib.convert(state_dict, model)
  checkpoint.save_params(out, params)
  return params


def main(argv):
  del argv
  f = flags.FLAGS
  config = f.config
  params = convert(config, f.checkpoint, f.out)
  out = os.path.abspath(f.out)
  print(f"converted {f.checkpoint} into model {config.model.name} ({config.model.size}): "
        f"{layers.count_params(params):,} parameters written to {out}")
  print(f"use it with: --config.init_from={out}")


def define_flags():
  """Defined only when run as a program, so importing tools side by side works."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "PyTorch .pth/.bin/.safetensors file or HF directory.")
  flags.DEFINE_string("out", None, "Directory to write the converted parameters to.")
  flags.mark_flags_as_required(["config", "checkpoint", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
