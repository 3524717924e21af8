"""MAR against full fine-tuning on the built-in synthetic data, both from one VideoMAE
pre-training run (issue: masked video modeling). Prints a table for BENCHMARKS.md.

  python benchmarks/mar_synthetic.py --workdir=/tmp/vidtx_mar_bench

1. configs/videomae_pretrain_k400.py:synthetic  (tube masking, reconstruction only)
2. configs/videomae_k400.py:synthetic           (all tokens), init_from 1
3. configs/mar_k400.py:synthetic                (cell running 50% + bridge + lambda recon), init_from 1
Then times one training step of 2 and 3 on the same batch (median of --timing_steps after
warm-up) for the step-time ratio. Finished runs are reused, so a rerun only re-times.
"""

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags, logging

from vidtx import configuration, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vidtx_mar_bench", "Where the three runs live.")
_TIMING_STEPS = flags.DEFINE_integer("timing_steps", 50, "Timed steps per fine-tuning config.")

RUNS = {
    "pretrain": "videomae_pretrain_k400.py:synthetic",
    "full": "videomae_k400.py:synthetic",
    "mar": "mar_k400.py:synthetic",
}


def run(name, workdir, data_dir, init_from=""):
  config = configuration.load(os.path.join(ROOT, "configs", RUNS[name]))
  config.data.data_dir, config.init_from = data_dir, init_from
  out = os.path.join(workdir, name)
  metrics_file = os.path.join(out, "eval_metrics.json")
  start = time.time()
  if not os.path.exists(metrics_file):
    train.train_and_evaluate(config, out)
  with open(metrics_file) as f:
    return config, json.load(f), time.time() - start


def step_ms(config, steps):
  """Median wall time of one jitted training step (ms) on a fixed random batch."""
  setup = train.build(config)
  d = config.data
  batch = {"video": np.random.default_rng(0).normal(
               size=(config.batch_size, d.num_frames, d.crop_size, d.crop_size, 3)).astype(np.float32),
           "label": np.arange(config.batch_size, dtype=np.int32) % d.num_classes}
  with jax.set_mesh(setup.mesh):
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in batch.items()}
    rng = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    for _ in range(5):  # compile and warm up
      state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = step(state, batch, rng)
      jax.block_until_ready(metrics)
      times.append(1000 * (time.perf_counter() - start))
  return statistics.median(times), float(np.percentile(times, 10)), float(np.percentile(times, 90))


def main(argv):
  del argv
  workdir = _WORKDIR.value
  data_dir = os.path.join(workdir, "data")
  results = {"pretrain": run("pretrain", workdir, data_dir)}
  pretrained = os.path.join(workdir, "pretrain")
  for name in ("full", "mar"):
    results[name] = run(name, workdir, data_dir, init_from=pretrained)
  timing = {name: step_ms(results[name][0], _TIMING_STEPS.value) for name in ("full", "mar")}

  print(f"\nMAR vs full fine-tuning on synthetic_motion ({jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__})")
  print("| run | config | steps | validation | step time (median, p10-p90) |")
  print("|---|---|---|---|---|")
  for name, (config, metrics, _) in results.items():
    if name == "pretrain":
      result = f"reconstruction MSE {metrics['recon_mse']:.3f}"
    else:
      result = f"top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}%"
    ms = timing.get(name)
    times = f"{ms[0]:.1f} ms ({ms[1]:.1f}-{ms[2]:.1f})" if ms else "-"
    print(f"| {name} | {RUNS[name]} | {config.total_steps} | {result} | {times} |")
  gap = 100 * (results["full"][1]["top1"] - results["mar"][1]["top1"])
  print(f"\nMAR / full step time: {timing['mar'][0] / timing['full'][0]:.2f}; "
        f"top-1 gap (full - MAR): {gap:.1f} points")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
