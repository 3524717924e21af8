"""Entry point: python -m vidtx.main --config=configs/demo.py --workdir=/tmp/run [--mode=eval]."""

from vidtx import host

_KEEPS_FREED_MEMORY = host.keep_freed_memory()  # before any import starts a thread

import json

import ml_collections
from absl import app, flags, logging

from vidtx import cli


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.mode == "train":
    cli.check_writable("workdir", f.workdir)
  # Imported after flag parsing: importing jax and tf is slow.
  from vidtx import evaluate, sharding, train
  if _KEEPS_FREED_MEMORY:
    logging.info("CPU backend: freed memory stays in the process for the next step "
                 "(vidtx.host.keep_freed_memory)")
  sharding.initialize_distributed(f.distributed)
  if f.mode == "train":
    metrics = train.train_and_evaluate(f.config, f.workdir)
  else:
    metrics = evaluate.evaluate_checkpoint(f.config, f.workdir)
  logging.info("%s", last_line(f.config, f.workdir, metrics))


def last_line(config: ml_collections.ConfigDict, workdir: str, metrics: dict) -> str:
  """What the run ends with: its metrics, or, for a training run that SIGTERM stopped (it
  returns no metrics), the step it saved and how to go on."""
  if metrics:
    return f"result: {json.dumps(metrics)}"
  from vidtx import checkpoint
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  step = ckpt.latest_step()
  ckpt.close()
  return (f"Stopped after SIGTERM: step {step} of {config.total_steps} is saved in "
          f"{ckpt.directory}; rerun the same command to resume.")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  cli.define_config("Experiment config file, optionally with a variant: configs/x.py:variant. "
                    "Override any field with --config.<field>=<value>.", flag_values)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and data.",
                      flag_values=flag_values)
  flags.DEFINE_enum("mode", "train", ["train", "eval"],
                    "train: train (resuming from the workdir) and evaluate; "
                    "eval: evaluate the workdir's latest checkpoint.", flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", False, "Call jax.distributed.initialize() to detect a multi-host cluster "
      "(Cloud TPU VM pod, SLURM). launch/local.sh uses VIDTX_* variables instead.",
      flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
