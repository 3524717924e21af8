"""PyTorch weights -> our parameters and BatchNorm statistics, with nothing dropped or guessed.

One module per source of checkpoints, each a `Source` (a name, how to tell its keys, a
conversion through name tables, `vidtx.weights.tables`, and for an HF layout how its config.json
is read, `vidtx.weights.settings`):
- `videomae`: HF VideoMAE, the official VideoMAE fine-tuning and pre-training files, and MAR
  (the vit and mae families);
- `timesformer`: HF and facebookresearch/TimeSformer; `vivit`: HF ViViT (model 1);
- `vtn`: the PySlowFast VTN checkpoint, and an HF LongformerModel into VTN's temporal encoder;
- `clip`: an HF CLIP vision tower (into ILA's `clip/`); `swin`: an HF image Swin into TPS,
  inflated;
- `image`: an HF image ViT or CLIP tower into a one-frame ViT, and a torchvision / timm
  ResNet-50 into resnet3d's one-frame ResNet, which init_from inflates;
- `torchvision_video`: torchvision's VideoResNet (R(2+1)D, R3D, MC3) and S3D, BatchNorm
  statistics included (the r2plus1d and s3d families);
- `mvit`: torchvision's MViT (mvit_v1_b, mvit_v2_s) and PySlowFast's MViT / MViTv2 `.pyth`
  files (the mvit family);
- `pytorchvideo`: pytorchvideo's ResNets (Slow, I3D; their model-zoo `.pyth` files too),
  BatchNorm statistics included (the resnet3d family).
- `x3d`: pytorchvideo's X3D (its hub's `.pyth` files) and PySlowFast's X3D `.pyth` files,
  BatchNorm statistics included (the x3d family).
Each model family lists the sources it converts from in its record (`Family.converters`);
`vidtx.tools.convert_weights` picks among them. `files` reads checkpoint files and an HF
directory's config.json; `inflate` holds the image -> video rules, which init_from uses too.

  params = convert(files.load_state_dict(path), model, family.converters,
                   hf_config=files.load_hf_config(path))
  state = nnx.state(model, (nnx.Param, nnx.BatchStat)); nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)

Every checkpoint key must be used and every parameter and statistic filled, so a checkpoint
that does not fit the model fails loudly instead of half-loading. An HF checkpoint's
config.json, when given, must also fit: every architecture setting it holds (activation,
LayerNorm eps, pooling, sizes, ...) is what the model computes, or it is refused by name
(`settings`); a bare state dict is checked by names and shapes only. The model may be real or
`nnx.eval_shape`d: only the shapes and the modules' settings are read.
"""

import dataclasses
from collections.abc import Callable, Sequence

from flax import nnx

from vidtx.weights import files, settings, tables

# How many names an error lists before it only counts the rest.
_MAX_LISTED = 40


@dataclasses.dataclass(frozen=True)
class Source:
  """One layout of checkpoint keys that a model family converts from."""
  name: str  # shown in messages, e.g. "HF VideoMAE"
  keys: str  # what its keys look like, for messages, e.g. "'videomae.embeddings...'"
  # (keys of a state dict) -> whether they are in this layout.
  detect: Callable[[Sequence[str]], bool]
  # (tables.Reader, target, model) -> our nested tree for `target` (the model's parameters and
  # statistics as a nested pure dict) with None where nothing fitted; the reader records why.
  # It may delete from `target` parts this checkpoint leaves out on purpose (a head), which are
  # then not required. `model` (real or abstract) gives what the tree does not (token grids).
  convert: Callable[[tables.Reader, dict, nnx.Module], dict]
  # The attribute of the model this source fills (ILA's CLIP tower: "clip"); None: all of it.
  part: str | None = None
  # How an HF layout's config.json is read against the model; None: the layout has none.
  hf_settings: settings.HFConfig | None = None

  def into(self, part: str) -> "Source":
    """This source filling the model's sub-module `part` alone."""
    return dataclasses.replace(self, part=part)


def find_source(state_dict, sources: Sequence[Source]) -> Source | None:
  """The first of `sources` whose layout the state dict's keys are in (wrappers removed)."""
  keys = list(files.strip_wrappers(state_dict))
  return next((source for source in sources if source.detect(keys)), None)


def convert(state_dict, model: nnx.Module, sources: Sequence[Source],
            hf_config: dict | None = None) -> dict:
  """Our nested pure dict (float32 numpy) of `model`'s parameters and BatchNorm statistics from
  a PyTorch state dict in the layout of one of `sources` (the first that detects its keys).

  `state_dict` maps names to numpy arrays or torch tensors (wrappers such as {"model": ...} are
  removed). A source with a `part` fills that sub-module alone: the result is {part: ...}.
  `hf_config`: the settings of an HF checkpoint (its config.json, `files.load_hf_config`),
  read against the model (`settings`); None: names and shapes are checked only.
  Raises ValueError when no source knows the keys; ValueError listing every setting of
  `hf_config` that the model does not compute as the checkpoint's model does; and ValueError
  listing every unused checkpoint key, every parameter left unfilled and every shape mismatch.
  """
  state_dict = files.strip_wrappers(state_dict)
  source = find_source(state_dict, sources)
  if source is None:
    expected = "; ".join(f"{s.name} ({s.keys})" for s in sources) or "none"
    raise ValueError(
        f"unrecognised checkpoint layout for {type(model).__name__} (keys e.g. "
        f"{sorted(state_dict)[:5]}): it converts from {expected}. An image model that a video "
        "model starts from goes through vidtx.tools.convert_weights and config.init_from")
  module = getattr(model, source.part) if source.part else model
  target = nnx.to_pure_dict(nnx.state(module, (nnx.Param, nnx.BatchStat)))
  reader = tables.Reader(state_dict)
  out = source.convert(reader, target, module)
  if hf_config is not None:
    if source.hf_settings is None:
      raise ValueError(f"a config.json came with a checkpoint in the {source.name} layout, "
                       "which is not an HF one: convert the weights file alone")
    settings.check(hf_config, source.hf_settings, module, list(state_dict), source.name)
  _check_complete(reader, target, out, source.name, type(module).__name__)
  return {source.part: out} if source.part else out


def _check_complete(reader, target, out, source_name, model_name):
  """Raises ValueError listing what `out` leaves unfilled of `target`, what disagrees and what
  of the checkpoint went unused."""
  wanted, got = _flatten(target), _flatten(out)
  unfilled = [f"{name} {tables.shape(wanted[name])}: {'; '.join(_reasons(reader, name))}"
              for name in wanted if got.get(name) is None]
  unused = reader.unused()
  problems = []
  if unfilled:
    problems.append(f"model parameters not filled ({len(unfilled)}):{_listed(unfilled)}")
  if reader.mismatches:
    problems.append(f"checkpoint entries that disagree with the model:"
                    f"{_listed(reader.mismatches)}")
  if unused:
    problems.append(f"checkpoint keys not used ({len(unused)}):{_listed(unused)}")
  if problems:
    hints = list(reader.hints)
    if any(".gamma_" in k for k in unused):
      hints.append("the checkpoint uses layer scale (init_values > 0), which our blocks lack")
    raise ValueError(f"cannot convert this {source_name} checkpoint into {model_name}:\n  "
                     + "\n  ".join(problems) + "".join(f"\nhint: {h}" for h in hints))
  extra = sorted(set(got) - set(wanted))
  if extra:  # a converter bug, not a checkpoint problem
    raise AssertionError(f"converted parameters the model lacks: {extra}")


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{name}/"))
    else:
      flat[name] = value
  return flat


def _reasons(reader, name):
  """Why parameter `name` is not filled: recorded against it or against a parent module."""
  parts = name.split("/")
  for i in range(len(parts), 0, -1):
    if "/".join(parts[:i]) in reader.reasons:
      return reader.reasons["/".join(parts[:i])]
  return ["no source for it in this layout"]


def _listed(items) -> str:
  items = list(items)
  lines = "".join(f"\n    {item}" for item in items[:_MAX_LISTED])
  if len(items) > _MAX_LISTED:
    lines += f"\n    ... and {len(items) - _MAX_LISTED} more"
  return lines
