"""Parallelism presets on 8 simulated devices: the same losses, parameters placed as the rules
say; gradient accumulation; the memory estimate."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_train import ROOT
from vidtx import builder, configuration, memory

# Runs in a fresh process: the device count is fixed when JAX starts.
EIGHT_DEVICES = r"""
import json, sys
import jax, numpy as np
from vidtx import builder, configuration, errors, sharding, train

def config(**fields):
  c = configuration.base()
  c.update_from_flattened_dict({
      "model.width": 64, "model.depth": 2, "model.num_heads": 8, "model.patch_size": (2, 8, 8),
      "data.num_frames": 4, "batch_size": 16, "optim.warmup_steps": 1, "total_steps": 10,
      **fields})
  return c

rng = np.random.default_rng(0)
batches = [{"video": rng.normal(size=(16, 4, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 8, 16).astype(np.int32)} for _ in range(3)]
out = {}
for name, fields in json.loads(sys.argv[1]).items():
  try:
    setup = builder.build(config(**fields))
  except errors.ConfigError as e:
    out[name] = str(e)
    continue
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    step = train.make_train_step(setup)
    key = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.to_global(batch, setup.batch_sharding), key,
                            train.stop_flags(setup.mesh, False))
      losses.append(float(metrics["loss"]))
  model, optimizer = state["model"], state["optimizer"]
  qkv = model["encoder"]["blocks"][0]["attn"]["qkv"][...]
  adam_mu = optimizer["opt_state"][0][0]["mu"]["encoder"]["blocks"][0]["attn"]["qkv"][...]
  out[name] = {
      "mesh": dict(setup.mesh.shape), "losses": losses,
      "qkv": [list(qkv.sharding.spec), qkv.addressable_shards[0].data.shape],
      "adam_mu": [list(adam_mu.sharding.spec), adam_mu.addressable_shards[0].data.shape],
      "fc1": model["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"][...]
             .addressable_shards[0].data.shape,
      "params": [np.asarray(x).ravel()[:4].tolist() for x in jax.tree.leaves(model)],
  }
print("RESULT " + json.dumps(out))
"""


def run_on_eight_devices(runs):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, json.dumps(runs)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.split("RESULT ", 1)[1])


def test_presets_give_the_same_losses_with_parameters_sharded_as_the_rules_say():
  r = run_on_eight_devices({
      "data": {"mesh.parallelism": "data"},
      "fsdp": {"mesh.parallelism": "fsdp"},
      "tensor": {"mesh.parallelism": "tensor"},
      "mixed": {"mesh.shape": (2, 2, 2)},
      "fsdp_accumulated": {"mesh.parallelism": "fsdp", "grad_accum_steps": 2},
      "4_heads_over_8": {"mesh.parallelism": "tensor", "model.num_heads": 4},
  })
  assert re.fullmatch(
      r"config.mesh: parameter encoder/blocks/0/attn/\w+ of shape \(.*\) cannot split its "
      r"dimension \d \(size 4\) over mesh axes \('tensor',\) of 8 devices; .*",
      r["4_heads_over_8"])
  assert r["data"]["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert r["fsdp"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert r["tensor"]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 8}
  # The qkv kernel [embed 64, 3, heads 8, head_dim 8] has embed on fsdp and heads on tensor;
  # each device holds the shard the mesh gives it. Adam's moments are placed like their
  # parameter.
  spec = ["fsdp", None, "tensor", None]
  assert r["data"]["qkv"] == [spec, [64, 3, 8, 8]]
  assert r["fsdp"]["qkv"] == [spec, [8, 3, 8, 8]]
  assert r["tensor"]["qkv"] == [spec, [64, 3, 1, 8]]
  assert r["mixed"]["qkv"] == [spec, [32, 3, 4, 8]]
  for name in ("data", "fsdp", "tensor", "mixed"):
    assert r[name]["adam_mu"] == r[name]["qkv"]
  # MLP kernel [embed 64, mlp 256].
  assert [r[name]["fc1"] for name in ("data", "fsdp", "tensor", "mixed")] == [
      [64, 256], [8, 256], [64, 32], [32, 128]]
  # The same three steps, whatever the placement; two micro-batches of 8 make the same update
  # as one batch of 16.
  for name in ("fsdp", "tensor", "mixed", "fsdp_accumulated"):
    np.testing.assert_allclose(r[name]["losses"], r["data"]["losses"], rtol=2e-5, err_msg=name)
    for a, b in zip(r[name]["params"], r["data"]["params"], strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
  assert r["data"]["losses"][2] < r["data"]["losses"][0]


def test_memory_estimate_counts_parameters_optimizer_and_saved_activations():
  c = configuration.base()
  c.update_from_flattened_dict({"model.width": 64, "model.depth": 2, "model.num_heads": 4,
                                "model.patch_size": (2, 8, 8), "data.num_frames": 4,
                                "batch_size": 8})
  setup = builder.build(c)
  sizes = memory.estimate(setup)
  num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state["model"]))
  assert sizes["params"] == 4 * num_params
  # AdamW: two moments per parameter, plus step counters.
  assert 2 * sizes["params"] <= sizes["optimizer"] < 2 * sizes["params"] + 64
  # A block keeps several [tokens, width] tensors (its input, norms, qkv, MLP hidden units):
  # per clip more than 8 times its 32 x 64 float32 input, for each of the 2 blocks.
  per_clip = sizes["activations"] / 8
  assert per_clip > 8 * 2 * 32 * 64 * 4
  c.unlock()
  c.grad_accum_steps = 2
  assert memory.estimate(builder.build(c))["activations"] == pytest.approx(sizes["activations"] / 2,
                                                                         rel=0.01)
