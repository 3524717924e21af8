"""Entry point: python -m vidtx.main --config=configs/demo.py --workdir=/tmp/run [--mode=eval]."""

from vidtx import host

_KEEPS_FREED_MEMORY = host.keep_freed_memory()  # before any import starts a thread

import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a variant: configs/x.py:variant. "
    "Override any field with --config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and data.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming from the workdir) and evaluate; "
                          "eval: evaluate the workdir's latest checkpoint.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() to detect a multi-host cluster "
    "(Cloud TPU VM pod, SLURM). launch/local.sh uses VIDTX_* variables instead.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Orbax logs every save step at INFO; keep its warnings, drop the chatter around our logs."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # Imported after flag parsing: importing jax and tf is slow.
  from vidtx import errors, evaluate, sharding, train
  if _KEEPS_FREED_MEMORY:
    logging.info("CPU backend: freed memory stays in the process for the next step "
                 "(vidtx.host.keep_freed_memory)")
  sharding.initialize_distributed(_DISTRIBUTED.value)
  try:
    if _MODE.value == "train":
      metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      metrics = evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  except (errors.ConfigError, errors.DataNotFoundError, FileNotFoundError,
          errors.ProcessMismatchError) as e:
    # The message names the field and the fix; a traceback would only bury it.
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  logging.info("result: %s", json.dumps(metrics))


if __name__ == "__main__":
  app.run(main)
