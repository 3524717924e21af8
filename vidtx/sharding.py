"""The device mesh, logical-axis rules, host-local -> global arrays, multi-process start-up.

Parameters name their axes logically ("embed", "mlp", "heads", ...); `config.mesh.rules` maps
those names to mesh axes. The default rules shard "embed" over `fsdp` and "mlp"/"heads" over
`tensor`, so the mesh shape alone chooses data parallel, FSDP or tensor parallel.
"""

import hashlib
import math
import os

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vidtx import errors


# mesh.parallelism presets: (hosts, devices per host) -> mesh.shape over (data, fsdp, tensor).
PARALLELISM = {
    "data": lambda hosts, per_host: (-1, 1, 1),
    "fsdp": lambda hosts, per_host: (1, -1, 1),
    "fsdp_per_host": lambda hosts, per_host: (hosts, per_host, 1),
    "tensor": lambda hosts, per_host: (hosts, 1, per_host),
}


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int,
               num_processes: int = 1) -> tuple[int, ...]:
  """The mesh shape: mesh.parallelism's preset or mesh.shape, with a single -1 resolved.

  Checks that the sizes multiply to the device count.
  """
  if mesh_config.parallelism:
    if mesh_config.parallelism not in PARALLELISM:
      errors.fail("mesh.parallelism", mesh_config.parallelism,
                  f"choose one of {sorted(PARALLELISM)}, or '' to use mesh.shape")
    if tuple(mesh_config.axes) != ("data", "fsdp", "tensor"):
      errors.fail("mesh.parallelism", mesh_config.parallelism,
                  f"presets are for mesh.axes=('data', 'fsdp', 'tensor'), not "
                  f"{tuple(mesh_config.axes)}; set mesh.shape instead")
    shape = PARALLELISM[mesh_config.parallelism](num_processes, num_devices // num_processes)
  else:
    shape = mesh_config.shape
  shape = list(shape)
  if shape.count(-1) > 1:
    errors.fail("mesh.shape", tuple(shape), "at most one axis may be -1")
  known = 1
  for s in shape:
    if s != -1:
      if s < 1:
        errors.fail("mesh.shape", tuple(shape), "sizes must be positive or -1")
      known *= s
  if -1 in shape:
    if num_devices % known:
      errors.fail("mesh.shape", tuple(shape),
                  f"the fixed sizes do not divide the {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    errors.fail("mesh.shape", tuple(shape), f"the sizes must multiply to the {num_devices} devices")
  return tuple(shape)


def check_config(config: ml_collections.ConfigDict, num_devices: int,
                 num_processes: int) -> None:
  """config.mesh, and whether the batches split over the mesh's batch axes and the hosts."""
  mesh = config.mesh
  if len(mesh.axes) != len(mesh.shape):
    errors.fail("mesh.shape", mesh.shape, f"needs one size per axis in mesh.axes={mesh.axes}")
  for axis in mesh.batch_axes:
    if axis not in mesh.axes:
      errors.fail("mesh.batch_axes", mesh.batch_axes, f"{axis!r} is not in mesh.axes={mesh.axes}")
  for logical, axis in mesh.rules:
    if axis is not None and axis not in mesh.axes:
      errors.fail("mesh.rules", (logical, axis), f"{axis!r} is not in mesh.axes={mesh.axes}")
  shape = mesh_shape(mesh, num_devices, num_processes)
  batch_devices = math.prod(size for name, size in zip(mesh.axes, shape)
                            if name in mesh.batch_axes)
  micro_batch = config.batch_size // config.grad_accum_steps
  if micro_batch % batch_devices:
    field, value = (("batch_size", config.batch_size) if config.grad_accum_steps == 1 else
                    ("grad_accum_steps", config.grad_accum_steps))
    errors.fail(field, value,
                f"each micro-batch of batch_size / grad_accum_steps = {micro_batch} clips must "
                f"split over the {batch_devices} devices of the batch axes "
                f"{tuple(mesh.batch_axes)}; e.g. --config.batch_size="
                f"{max(1, micro_batch // batch_devices) * batch_devices * config.grad_accum_steps}")
  if config.batch_size % num_processes:
    errors.fail("batch_size", config.batch_size,
                f"must be divisible by the number of hosts ({num_processes})")
  eval_batch = config.eval_batch_size or config.batch_size
  if config.eval_batch_size < 0 or eval_batch % batch_devices or eval_batch % num_processes:
    errors.fail("eval_batch_size", config.eval_batch_size,
                f"must be 0 (batch_size) or a positive multiple of the {batch_devices} devices "
                f"of the batch axes and of the {num_processes} hosts")


def build_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices), jax.process_count())
  return jax.make_mesh(shape, tuple(mesh_config.axes), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, str | None], ...]:
  return tuple((logical, axis) for logical, axis in mesh_config.rules)


def state_shardings(state, mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict):
  """NamedShardings for an nnx.State (concrete or abstract) from its logical axis names."""
  with nnx.logical_axis_rules(rules(mesh_config)):
    specs = nnx.get_partition_spec(state)
  # Frozen parameters' optimizer state is an empty optax.MaskedNode: it stays one, so the
  # shardings have exactly the state's leaves.
  empty = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda leaf, spec: leaf if empty(leaf) else NamedSharding(mesh, spec),
                      state, specs, is_leaf=empty)


def check_divisible(abstract_state, shardings) -> None:
  """Raises ConfigError naming the first parameter whose dimension does not split evenly over
  the mesh axes its logical axis maps to (e.g. 12 heads over a tensor axis of 8)."""
  for (path, leaf), named in zip(jax.tree_util.tree_flatten_with_path(abstract_state)[0],
                                 jax.tree.leaves(shardings)):
    for dim, (size, axes) in enumerate(zip(leaf.shape, named.spec)):
      axes = (axes,) if isinstance(axes, str) else axes or ()
      parts = int(np.prod([named.mesh.shape[a] for a in axes]))
      if size % parts:
        name = jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")
        raise errors.ConfigError(
            f"config.mesh: parameter {name} of shape {leaf.shape} cannot split its dimension "
            f"{dim} (size {size}) over mesh axes {axes} of {parts} devices; choose a mesh.shape "
            "whose axis divides it, or map that logical axis to None in mesh.rules")


def batch_sharding(mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict):
  """Leading (batch) axis split over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(tuple(mesh_config.batch_axes)))


def replicated(mesh: jax.sharding.Mesh):
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each host's part of the batch into global arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def initialize_distributed(distributed_flag: bool = False) -> None:
  """Joins a multi-process run before anything touches the devices; a no-op for one process.

  Sources, first match wins:
  - `VIDTX_COORDINATOR` (host:port), `VIDTX_NUM_PROCESSES`, `VIDTX_PROCESS_ID`, as
    `launch/local.sh` sets them: processes on one machine (CPU collectives go through gloo).
  - `distributed_flag` (`--distributed`): `jax.distributed.initialize()` with no arguments, which
    detects Cloud TPU VMs and SLURM jobs itself (what `launch/tpu.py` and `launch/slurm.py` use).
  """
  env = {k: os.environ.get(f"VIDTX_{k}") for k in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID")}
  if any(env.values()):
    missing = [f"VIDTX_{k}" for k, v in env.items() if not v]
    if missing:
      raise ValueError(f"{', '.join(missing)} not set but other VIDTX_* variables are ({env}); "
                       "set all three, or none (launch/local.sh sets them)")
    try:
      num_processes, process_id = int(env["NUM_PROCESSES"]), int(env["PROCESS_ID"])
    except ValueError:
      raise ValueError(f"VIDTX_NUM_PROCESSES and VIDTX_PROCESS_ID must be integers, got {env}")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"VIDTX_PROCESS_ID={process_id} is not in [0, {num_processes})")
    # CPU processes have no collectives of their own; gloo runs them over TCP. The platform is
    # read from the config, not the backend: the backend must not start before initialize().
    platforms = jax.config.jax_platforms or ""
    if not platforms or "cpu" in platforms.split(","):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env["COORDINATOR"],
                               num_processes=num_processes, process_id=process_id)
  elif distributed_flag:
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d: %d local devices, %d in all (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())


def _gather_rows(row: np.ndarray) -> np.ndarray:
  """[process_count, k]: every process's int32 `row`, on every process (an all-gather).

  Built from process-local data and a jitted resharding to replicated rather than
  `jax.experimental.multihost_utils`, so it uses only the public core API.
  """
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ("all",), axis_types=(AxisType.Auto,), devices=devices)
  local = np.tile(np.asarray(row, np.int32)[None], (jax.local_device_count(), 1))
  rows = jax.make_array_from_process_local_data(NamedSharding(mesh, P("all")), local)
  everywhere = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))(rows)
  gathered = np.asarray(everywhere.addressable_data(0))
  # One row per device; the first column says whose it is. Keep one per process.
  return np.stack([gathered[gathered[:, 0] == p][0] for p in range(jax.process_count())])


def check_processes_agree(what: str, value: str) -> None:
  """Raises on every process unless all processes have the same `value` (e.g. the config JSON).

  Also a barrier: no process returns before all have called it. A no-op for one process.
  """
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:12], np.int32)
  rows = _gather_rows(np.concatenate([[jax.process_index()], digest]))
  differ = [p for p in range(len(rows)) if not np.array_equal(rows[p, 1:], rows[0, 1:])]
  if differ:
    raise errors.ProcessMismatchError(
        f"processes disagree on the {what}: processes {differ} differ from process 0 (sha256 "
        f"prefixes {[rows[p, 1:].tobytes().hex() for p in range(len(rows))]}). Start every "
        "process with the same command, config file and code version.")
