"""Orbax checkpoints in `<workdir>/checkpoints`: train state plus a small JSON of metadata.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames). The
state is restored against an abstract target carrying the *current* mesh's shardings, so a
checkpoint written on one topology restores on another.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from vidtx import errors
from vidtx.weights import inflate


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        # Named up front so a fresh process can read a checkpoint's metadata before restoring.
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: nnx.State, meta: dict) -> None:
    """Starts an asynchronous save; `meta` must be JSON-serialisable."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state: nnx.State, step: int | None = None):
    """Returns (state, meta) of `step` (default: latest) laid out as `abstract_state` says.

    `abstract_state` holds jax.ShapeDtypeStructs with shardings; a checkpoint whose shapes
    differ raises an error naming the parameter.
    """
    step = self.latest_step() if step is None else step
    target = nnx.to_pure_dict(abstract_state)
    metadata = self.manager.item_metadata(step)["state"]
    _check_shapes(metadata, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill in
    nnx.replace_by_pure_dict(state, restored["state"])
    logging.info("Restored checkpoint %d from %s", step, self.directory)
    return state, restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _flat(tree) -> dict:
  # Keyed by path string: orbax's metadata has string keys where the state has ints.
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nest(flat: dict) -> dict:
  tree = {}
  for name, leaf in flat.items():
    *parents, last = name.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = leaf
  return tree


def _step_directory(path: str) -> str:
  """A step directory from a workdir, its checkpoints/ directory, or a step directory."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "state")):
    return path
  directory = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  if not steps:
    raise errors.ConfigError(
        f"config.init_from={path!r}: no checkpoint there; give a workdir of a run, its "
        "checkpoints/ directory, or one step's directory")
  return os.path.join(directory, str(max(steps)))


def save_params(directory: str, params: dict) -> str:
  """Writes model parameters alone (e.g. converted from another framework) as step 0 of
  `directory`, readable by `init_from`. Returns the step directory."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"model": params})),
               force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(os.path.abspath(directory), "0")


def check_config(config) -> None:
  """The checkpoint fields of the config."""
  if config.init_from_inflation not in inflate.INFLATIONS:
    errors.fail("init_from_inflation", config.init_from_inflation,
                f"choose one of {inflate.INFLATIONS}")


def init_from(state: nnx.State, path: str, family, grid=None,
              inflation: str = "average") -> nnx.State:
  """`state` ({"model", "optimizer"}) with the model parameters of the checkpoint at `path`
  copied in by name where the shapes agree, restored straight into their current shardings.
  `family` (`vidtx.models.family.Family`) gives the model's name rules: which checkpoint names
  may initialise a parameter (`init_names`), and which start at zero (`init_zero`).

  An image model's weights (e.g. a 2-D ViT converted by vidtx.tools.convert_weights) are
  inflated to video by the rules of `vidtx.weights.inflate`, given the model's token `grid`
  (T', H', W'):
  - a convolution kernel of one frame [1, h, w, C, D] (a patch embedding) becomes
    [t, h, w, C, D]: repeated over t and divided by t ("average": a clip of equal frames gives
    the image's tokens) or placed at the central frame with zeros elsewhere ("central");
  - learned position embeddings of the image's h x w patches are resized bicubically to H' x W'
    and tiled over the T' frames when the model has a row per tubelet; the image's CLS row is
    kept for a model with a CLS token and dropped for one without (ViViT models 3 and 4);
  - the family's name rules, e.g. TimeSformer's: "encoder/..." names fill it without that
    prefix, and a temporal attention the image model lacks (blocks/i/temporal) starts as a copy
    of the block's spatial one;
  - a video model's time embedding of another number of frames is resized (nearest, as
    TimeSformer's reference).
  Parameters the checkpoint lacks (a new head) keep their fresh values, parameters the model
  lacks (a pre-training decoder in a plain classifier) are not read; all are logged. A
  parameter both have in shapes no rule maps (other than a classifier's class count) is a
  ConfigError naming it.
  """
  if inflation not in inflate.INFLATIONS:
    raise errors.ConfigError(f"config.init_from_inflation={inflation!r}: choose one of "
                             f"{inflate.INFLATIONS}")
  step_dir = _step_directory(path)
  saved = _flat(ocp.PyTreeCheckpointer().metadata(
      os.path.join(step_dir, "state")).item_metadata.tree["model"])
  pure = nnx.to_pure_dict(state)
  current = _flat(pure["model"])
  source = {k: next((n for n in family.init_names(k) if n in saved), None) for k in current}
  zeroed = {k for k, v in source.items()
            if v is not None and family.init_zero(k, frozenset(saved))}
  source = {k: v for k, v in source.items() if v is not None and k not in zeroed}
  same = {k for k, v in source.items() if v == k and tuple(saved[k].shape) == current[k].shape}
  target = {"model": _nest({k: jax.ShapeDtypeStruct(current[k].shape, current[k].dtype,
                                                    sharding=current[k].sharding)
                             for k in same})}
  restored = _flat(ocp.PyTreeCheckpointer().restore(
      os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))["model"]) if same else {}
  surgery = {k: v for k, v in source.items() if k not in same}
  if surgery:
    names = sorted(set(surgery.values()))
    host = _flat(ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
            item={"model": _nest({n: saved[n] for n in names})},
            restore_args={"model": _nest({n: ocp.RestoreArgs(restore_type=np.ndarray)
                                          for n in names})},
            partial_restore=True))["model"])
    for k, name in surgery.items():
      value = inflate.parameter(k, np.asarray(host[name]), current[k].shape, grid, inflation)
      if value is not None:
        restored[k] = jax.device_put(value.astype(current[k].dtype), current[k].sharding)
  for k in zeroed:
    restored[k] = jax.device_put(np.zeros(current[k].shape, current[k].dtype),
                                 current[k].sharding)
  if not restored:
    raise errors.ConfigError(
        f"config.init_from={path!r}: none of its parameters matches the model by name and shape "
        f"(it has e.g. {sorted(saved)[:3]}, the model {sorted(current)[:3]}); was it written for "
        "another model? PyTorch weights go through vidtx.tools.convert_weights first")
  classes = _class_axis_params(state["model"])
  incompatible = [f"{k}: the model's {tuple(current[k].shape)}, the checkpoint's {surgery[k]} "
                  f"{tuple(saved[surgery[k]].shape)}" for k in sorted(surgery)
                  if k not in restored and k not in classes]
  if incompatible:
    raise errors.ConfigError(
        f"config.init_from={path!r}: parameters whose shapes no inflation rule maps (a kernel "
        "of one frame, an image's position embedding, a time embedding; a classifier of "
        "another class count starts fresh):\n  " + "\n  ".join(incompatible)
        + "\nWas the checkpoint written for another width, patch size or model?")
  pure["model"] = jax.tree_util.tree_map_with_path(
      lambda p, v: restored.get(jax.tree_util.keystr(p, simple=True, separator="/"), v),
      pure["model"])
  nnx.replace_by_pure_dict(state, pure)
  fresh = sorted(current.keys() - restored.keys())
  unused = sorted(saved.keys() - set(source[k] for k in restored if k in source))
  logging.info("init_from %s: copied %d of %d parameter arrays (%d inflated, renamed or "
               "zeroed; %s of %s values); kept fresh: %s; not used from the checkpoint: %s",
               step_dir, len(restored), len(current), len(restored) - len(same),
               f"{sum(int(np.prod(current[k].shape)) for k in restored):,}",
               f"{sum(int(np.prod(v.shape)) for v in current.values()):,}",
               fresh or "none", unused or "none")
  return state


def _class_axis_params(model_state) -> set:
  """Names of the parameters with a "classes" logical axis (classifier heads)."""
  leaves = jax.tree_util.tree_flatten_with_path(
      model_state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return {jax.tree_util.keystr(p, simple=True, separator="/") for p, v in leaves
          if isinstance(v, nnx.Variable)
          and "classes" in tuple(v.get_metadata().get("out_sharding") or ())}


def _check_shapes(saved, target) -> None:
  saved, target = _flat(saved), _flat(target)
  missing, unexpected = sorted(target.keys() - saved.keys()), sorted(saved.keys() - target.keys())
  if missing or unexpected:
    raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]} (was it written with another config?)")
  for name, want in target.items():
    got = tuple(saved[name].shape)
    if got != tuple(want.shape):
      raise ValueError(f"checkpoint parameter {name} has shape {got} but the model "
                       f"expects {tuple(want.shape)} (was it written with another config?)")
