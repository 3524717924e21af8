"""MAR against full fine-tuning on the built-in synthetic data, both from one VideoMAE
pre-training run (issue: masked video modeling). Prints a table for BENCHMARKS.md.

  python benchmarks/mar_synthetic.py --workdir=/tmp/vidtx_mar_bench

1. configs/videomae_pretrain_k400.py:cpu        (tube masking, reconstruction only)
2. configs/videomae_k400.py:cpu                 (all tokens), init_from 1
3. configs/mar_k400.py:cpu                      (cell running 50% + bridge + lambda recon), init_from 1
Then times one training step of 2 and 3 (benchmarks/train_step.py's `measure`: median of
--timing_steps after warm-up) for the step-time ratio. Finished runs are reused, so a rerun only re-times.
"""

from vidtx import host

host.keep_freed_memory()  # as vidtx.main does, before any import starts a thread

import json
import os

import jax
from absl import app, flags, logging

import train_step  # benchmarks/train_step.py: one timed training step
from vidtx import configuration, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vidtx_mar_bench", "Where the three runs live.")
_TIMING_STEPS = flags.DEFINE_integer("timing_steps", 50, "Timed steps per fine-tuning config.")

RUNS = {
    "pretrain": "videomae_pretrain_k400.py:cpu",
    "full": "videomae_k400.py:cpu",
    "mar": "mar_k400.py:cpu",
}


def run(name, workdir, data_dir, init_from=""):
  config = configuration.load(os.path.join(ROOT, "configs", RUNS[name]))
  config.data.data_dir, config.init_from = data_dir, init_from
  out = os.path.join(workdir, name)
  metrics_file = os.path.join(out, "eval_metrics.json")
  if not os.path.exists(metrics_file):
    train.train_and_evaluate(config, out)
  with open(metrics_file) as f:
    return config, json.load(f)


def main(argv):
  del argv
  workdir = _WORKDIR.value
  data_dir = os.path.join(workdir, "data")
  results = {"pretrain": run("pretrain", workdir, data_dir)}
  pretrained = os.path.join(workdir, "pretrain")
  for name in ("full", "mar"):
    results[name] = run(name, workdir, data_dir, init_from=pretrained)
  timing = {name: train_step.measure(results[name][0], _TIMING_STEPS.value)
            for name in ("full", "mar")}

  print(f"\nMAR vs full fine-tuning on synthetic_motion ({jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__})")
  print("| run | config | steps | validation | step time (median, p10-p90) |")
  print("|---|---|---|---|---|")
  for name, (config, metrics) in results.items():
    if name == "pretrain":
      result = f"reconstruction MSE {metrics['recon_mse']:.3f}"
    else:
      result = f"top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}%"
    t = timing.get(name)
    times = f"{t['step_ms']:.1f} ms ({t['p10_ms']:.1f}-{t['p90_ms']:.1f})" if t else "-"
    print(f"| {name} | {RUNS[name]} | {config.total_steps} | {result} | {times} |")
  gap = 100 * (results["full"][1]["top1"] - results["mar"][1]["top1"])
  print(f"\nMAR / full step time: {timing['mar']['step_ms'] / timing['full']['step_ms']:.2f}; "
        f"top-1 gap (full - MAR): {gap:.1f} points")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
