"""A model and its training state from a config, and from a workdir's checkpoint.

Used by the training loop, evaluation, prediction, export and the tools alike, so none of
them imports the loop. The state is `nnx.state({"model": model, "optimizer": optimizer})`:
a checkpoint holds it under those two names.
"""

import dataclasses
import os
from collections.abc import Callable

import jax
import ml_collections
from flax import nnx

from vidtx import checkpoint, configuration, data, models, optim, sharding


@dataclasses.dataclass
class Setup:
  """Everything the loop and evaluation need, built once from the config."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef  # of {"model": model, "optimizer": optimizer}
  abstract_state: nnx.State  # ShapeDtypeStructs with the mesh's shardings
  state_shardings: nnx.State
  batch_sharding: jax.sharding.NamedSharding
  create: Callable[[], dict]  # builds {"model": model, "optimizer": optimizer}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Setup:
  """Validates the config, builds the mesh and the (abstract) model + optimizer state."""
  configuration.validate(config)
  mesh = sharding.build_mesh(config.mesh) if mesh is None else mesh
  family = models.family(config.model)

  def create():
    model = models.build(config.model, config.data, nnx.Rngs(params=config.seed))
    # Only layer decay reads the depth; families without it refuse layer decay at validation.
    depth = family.layer_decay_depth(config.model) if config.optim.layer_decay < 1 else 0
    tx = optim.build(config.optim, config.total_steps, depth=depth, layer_of=family.layer_of)
    return {"model": model, "optimizer": nnx.Optimizer(model, tx, wrt=nnx.Param)}

  graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
  shardings = sharding.state_shardings(abstract_state, mesh, config.mesh)
  # The optimizer state mirrors the model's.
  sharding.check_divisible(abstract_state["model"], shardings["model"])
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  return Setup(config, mesh, graphdef, abstract_state, shardings,
               sharding.batch_sharding(mesh, config.mesh), create)


def init_state(setup: Setup) -> nnx.State:
  """Creates parameters and optimizer state directly in their shardings."""
  return jax.jit(lambda: nnx.state(setup.create()), out_shardings=setup.state_shardings)()


def restore_state(setup: Setup, workdir: str, step: int | None = None) -> tuple[nnx.State, dict]:
  """The state of `workdir`'s latest checkpoint (or `step`), laid out in the setup's shardings,
  and its metadata. A FileNotFoundError naming the directory when there is none."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # before Checkpointer makes it
    raise FileNotFoundError(f"no checkpoint in {workdir}; train first with --mode=train")
  ckpt = checkpoint.Checkpointer(workdir, keep=setup.config.keep_checkpoints)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first with "
                              "--mode=train")
    with jax.set_mesh(setup.mesh):
      return ckpt.restore(setup.abstract_state, step)
  finally:
    ckpt.close()


def restore_model(config: ml_collections.ConfigDict, workdir: str,
                  step: int | None = None) -> tuple[nnx.Module, int]:
  """The model of `workdir`'s latest checkpoint (or `step`), without its optimizer state, on
  this process's devices (for prediction, export and the visualisers); and the step it was
  saved at."""
  setup = build(config)
  state, meta = restore_state(setup, workdir, step)
  return nnx.merge(setup.graphdef, state)["model"], meta["step"]


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> str:
  """data.prepare (see there) on process 0 first, then on the others: processes must not
  generate one dataset side by side. Returns the data directory."""
  if jax.process_index() == 0:
    data_dir = data.prepare(config.data, workdir)
  sharding.check_processes_agree("data preparation barrier", "")
  return data_dir if jax.process_index() == 0 else data.prepare(config.data, workdir)
