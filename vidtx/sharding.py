"""The device mesh, logical-axis rules, and host-local -> global arrays.

Parameters name their axes logically ("embed", "mlp", "heads", ...); `config.mesh.rules` maps
those names to mesh axes. The default rules shard "embed" over `fsdp` and "mlp"/"heads" over
`tensor`, so the mesh shape alone chooses data parallel, FSDP or tensor parallel.
"""

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vidtx import configuration


def build_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = configuration.mesh_shape(mesh_config.shape, len(devices))
  return jax.make_mesh(shape, tuple(mesh_config.axes), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, str | None], ...]:
  return tuple((logical, axis) for logical, axis in mesh_config.rules)


def state_shardings(state, mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict):
  """NamedShardings for an nnx.State (concrete or abstract) from its logical axis names."""
  with nnx.logical_axis_rules(rules(mesh_config)):
    specs = nnx.get_partition_spec(state)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: jax.sharding.Mesh, mesh_config: ml_collections.ConfigDict):
  """Leading (batch) axis split over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(tuple(mesh_config.batch_axes)))


def replicated(mesh: jax.sharding.Mesh):
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each host's part of the batch into global arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
