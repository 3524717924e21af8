"""PyTorch checkpoint files -> a state dict of numpy arrays.

`load_state_dict` reads a `.pth`/`.bin`/`.safetensors` file or an HF `save_pretrained`
directory (sharded or not). torch is only imported to read torch files; safetensors files are
read without it unless they hold bfloat16. `load_hf_config` reads such a directory's
config.json, the architecture settings that `vidtx.weights.convert` checks the model against.
"""

import argparse
import json
import os
import pickle

import numpy as np

# Wrappers of the state dict in released files: official VideoMAE ("model"/"module"), MAR and
# SlowFast-style trainers ("model_state"), generic ("state_dict").
WRAPPER_KEYS = ("model", "module", "model_state", "state_dict")


def to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy array or a torch tensor (16-bit floats widened to float32)."""
  if hasattr(value, "detach"):  # a torch tensor; torch stays un-imported here
    value = value.detach().cpu()
    if value.dtype.is_floating_point and value.dtype.itemsize < 4:
      value = value.float()  # numpy has no bfloat16
    return value.numpy()
  return np.asarray(value)


def strip_wrappers(loaded) -> dict:
  """The state dict inside a loaded file: unwraps {"model": ...}-style wrappers and DDP's
  "module." prefix."""
  state = loaded
  while isinstance(state, dict) and not _looks_like_state_dict(state):
    inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
    if inner is None:
      raise ValueError(f"no state dict in the checkpoint: its top-level keys are "
                       f"{sorted(state)[:10]}; expected parameter names or one of "
                       f"{WRAPPER_KEYS} holding them")
    state = inner
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return dict(state)


def _looks_like_state_dict(d: dict) -> bool:
  return bool(d) and all(hasattr(v, "shape") for v in d.values())


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The state dict (numpy arrays) of a `.pth`/`.bin`/`.safetensors` file or of a HF
  `save_pretrained` directory, with wrappers such as {"model": ...} removed."""
  if os.path.isdir(path):
    return strip_wrappers(_load_hf_directory(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist: give a .pth/.bin/.safetensors "
                            "file or a HF save_pretrained directory")
  if path.endswith(".safetensors"):
    return strip_wrappers(_load_safetensors(path))
  return strip_wrappers(_to_numpy_tree(_torch_load(path)))


def load_hf_config(path: str) -> dict | None:
  """The settings in the config.json of a HF `save_pretrained` directory; None for a file or a
  directory without one (a bare state dict, checked by names and shapes only)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isdir(path) or not os.path.exists(config_path):
    return None
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read the HF settings {config_path}: {e}") from e
  if not isinstance(config, dict):
    raise ValueError(f"{config_path} holds {type(config).__name__}, not the settings of a HF "
                     "model (a JSON object)")
  return config


def _load_hf_directory(path):
  for name, loader in (("model.safetensors", _load_safetensors),
                       ("pytorch_model.bin", _torch_load)):
    if os.path.exists(os.path.join(path, name)):
      return _to_numpy_tree(loader(os.path.join(path, name)))
    index = os.path.join(path, f"{name}.index.json")
    if os.path.exists(index):  # sharded
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      merged = {}
      for shard in shards:
        merged.update(loader(os.path.join(path, shard)))
      return _to_numpy_tree(merged)
  raise FileNotFoundError(f"{path!r} holds no model.safetensors or pytorch_model.bin (nor a "
                          "sharded index): is it a HF save_pretrained directory?")


def _load_safetensors(path):
  from safetensors import numpy as safetensors_numpy
  try:
    return safetensors_numpy.load_file(path)  # no torch needed
  except TypeError:  # bfloat16, which numpy lacks: read through torch and widen
    from safetensors import torch as safetensors_torch
    return safetensors_torch.load_file(path, device="cpu")


def _torch_load(path):
  import torch
  # Official VideoMAE files also pickle the training args (an argparse.Namespace); allow that
  # one plain class and nothing else that could run code.
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(f"torch.load({path!r}, weights_only=True) refused the file: {e}\nIf you "
                     "trust it, save its state dict alone: torch.save(torch.load(path, "
                     "weights_only=False)['model'], 'weights.pth') and convert that") from e


def _to_numpy_tree(loaded):
  if isinstance(loaded, dict):
    return {k: _to_numpy_tree(v) for k, v in loaded.items()}
  return to_numpy(loaded) if hasattr(loaded, "detach") else loaded
