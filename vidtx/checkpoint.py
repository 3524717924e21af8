"""Orbax checkpoints in `<workdir>/checkpoints`: train state plus a small JSON of metadata.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames). The
state is restored against an abstract target carrying the *current* mesh's shardings, so a
checkpoint written on one topology restores on another.
"""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx


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


def _check_shapes(saved, target) -> None:
  # Compared by path string: orbax's metadata has string keys where the state has ints.
  def flat(tree):
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  saved, target = flat(saved), flat(target)
  missing, unexpected = sorted(target.keys() - saved.keys()), sorted(saved.keys() - target.keys())
  if missing or unexpected:
    raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]} (was it written with another config?)")
  for name, want in target.items():
    got = tuple(saved[name].shape)
    if got != tuple(want.shape):
      raise ValueError(f"checkpoint parameter {name} has shape {got} but the model "
                       f"expects {tuple(want.shape)} (was it written with another config?)")
