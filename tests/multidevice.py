"""Real train steps on 8 simulated CPU devices, in a fresh process (JAX fixes its device count
when it starts), for the tests that compare meshes: `train(runs)` runs each named config on
a random batch and returns its losses, mesh, every state leaf's sharding and the final state."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import jax, numpy as np
from flax import nnx
from vidtx import builder, configuration, errors, sharding, train

runs, steps, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
report = {}
for name, fields in runs.items():
  one_device = fields.pop("one_device", False)
  c = configuration.base()
  c.update_from_flattened_dict(fields)
  try:
    mesh = sharding.build_mesh(c.mesh, devices=jax.devices()[:1]) if one_device else None
    setup = builder.build(c, mesh)
  except errors.ConfigError as e:
    report[name] = str(e)
    continue
  d, rng = c.data, np.random.default_rng(0)
  # One random batch (uint8, as the host sends), every step: its loss must fall.
  batches = [{"video": rng.integers(0, 256, (c.batch_size, d.num_frames, d.crop_size,
                                            d.crop_size, 3), np.uint8),
              "label": rng.integers(0, d.num_classes, c.batch_size).astype(np.int32)}] * steps
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    step = train.make_train_step(setup)
    key = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.to_global(batch, setup.batch_sharding), key,
                            train.stop_flags(setup.mesh, False))
      losses.append(float(metrics["loss"]))
  leaves = [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]]
  np.savez(f"{out}/{name}.npz", **{p.replace("/", "|"): np.asarray(x) for p, x in leaves})
  report[name] = {
      "mesh": dict(setup.mesh.shape), "losses": losses,
      # path -> [partition spec, the shape of this process's first shard]
      "shardings": {p: [list(x.sharding.spec), list(x.addressable_shards[0].data.shape)]
                    for p, x in leaves},
  }
print("RESULT " + json.dumps(report))
"""


def train(runs: dict[str, dict], out_dir, steps: int = 2) -> dict:
  """{name: {"mesh", "losses", "shardings", "state": {path: array}} or the ConfigError's
  message} for `runs` {name: flattened config fields, plus "one_device": True for a one-device
  mesh}, each trained `steps` real train steps on the same random batch from the same init.
  The final states are written to `out_dir`."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(runs), str(steps),
                        str(out_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.split("RESULT ", 1)[1])
  for name, result in report.items():
    if isinstance(result, dict):
      with np.load(os.path.join(out_dir, f"{name}.npz")) as saved:
        result["state"] = {k.replace("|", "/"): saved[k] for k in saved.files}
  return report


def assert_same_training(result, reference, name: str, rtol=1e-4, atol=1e-6) -> None:
  """The same losses and final state (parameters, statistics, optimizer) in two runs."""
  np.testing.assert_allclose(result["losses"], reference["losses"], rtol=2e-5, err_msg=name)
  assert result["state"].keys() == reference["state"].keys(), name
  for path, value in reference["state"].items():
    np.testing.assert_allclose(result["state"][path], value, rtol=rtol, atol=atol,
                               err_msg=f"{name}: {path}")
