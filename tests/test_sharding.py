"""Parallelism presets on 8 simulated devices: the same losses, parameters placed as the rules
say; gradient accumulation; the memory estimate."""

import re

import jax
import numpy as np
import pytest

import multidevice
from vidtx import builder, configuration, memory


def test_presets_give_the_same_losses_with_parameters_sharded_as_the_rules_say(tmp_path):
  base = {"model.width": 64, "model.depth": 2, "model.num_heads": 8, "model.patch_size": (2, 8, 8),
          "data.num_frames": 4, "batch_size": 16, "optim.warmup_steps": 1, "total_steps": 10}
  r = multidevice.train({
      "data": {**base, "mesh.parallelism": "data"},
      "fsdp": {**base, "mesh.parallelism": "fsdp"},
      "tensor": {**base, "mesh.parallelism": "tensor"},
      "mixed": {**base, "mesh.shape": (2, 2, 2)},
      "fsdp_accumulated": {**base, "mesh.parallelism": "fsdp", "grad_accum_steps": 2},
      "4_heads_over_8": {**base, "mesh.parallelism": "tensor", "model.num_heads": 4},
  }, tmp_path, steps=3)
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
  qkv = "encoder/blocks/0/attn/qkv"
  spec = ["fsdp", None, "tensor", None]
  sharded = lambda name, path: r[name]["shardings"][path]
  assert sharded("data", f"model/{qkv}") == [spec, [64, 3, 8, 8]]
  assert sharded("fsdp", f"model/{qkv}") == [spec, [8, 3, 8, 8]]
  assert sharded("tensor", f"model/{qkv}") == [spec, [64, 3, 1, 8]]
  assert sharded("mixed", f"model/{qkv}") == [spec, [32, 3, 4, 8]]
  for name in ("data", "fsdp", "tensor", "mixed"):
    assert sharded(name, f"optimizer/opt_state/0/0/mu/{qkv}") == sharded(name, f"model/{qkv}")
  # MLP kernel [embed 64, mlp 256].
  fc1 = "model/encoder/blocks/0/mlp/fc1/kernel"
  assert [sharded(name, fc1)[1] for name in ("data", "fsdp", "tensor", "mixed")] == [
      [64, 256], [8, 256], [64, 32], [32, 128]]
  # The same three steps and final state, whatever the placement; two micro-batches of 8 make
  # the same update as one batch of 16.
  for name in ("fsdp", "tensor", "mixed", "fsdp_accumulated"):
    multidevice.assert_same_training(r[name], r["data"], name, atol=1e-5)
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
  accumulated = memory.estimate(builder.build(c))["activations"]
  assert accumulated == pytest.approx(sizes["activations"] / 2, rel=0.01)
