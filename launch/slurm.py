"""SLURM launcher for GPU clusters: writes an sbatch script that runs `vidtx.main --distributed`
as one task per GPU, and submits it (or prints it with --dry_run).

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \
      --config=configs/mar_k400.py --workdir=/shared/runs/mar --dry_run -- --config.total_steps=1000

One task per GPU because that is what JAX's SLURM detection assumes: in
`jax.distributed.initialize()` each process takes the GPU numbered by its SLURM_LOCALID, and the
coordinator, process count and id come from the SLURM_* variables. The workdir must be on a
filesystem every node sees (all processes write the checkpoints). Everything after `--` goes
to vidtx.main.
"""

import os
import shlex
import subprocess
import sys
import tempfile

from absl import app, flags

_NODES = flags.DEFINE_integer("nodes", 1, "Number of nodes.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node, one process each.")
_PARTITION = flags.DEFINE_string("partition", None, "SLURM partition; default: the cluster's.")
_TIME = flags.DEFINE_string("time", "24:00:00", "Wall-clock limit, HH:MM:SS or D-HH:MM:SS.")
_JOB_NAME = flags.DEFINE_string("job_name", "vidtx", "SLURM job name; also names the log file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory on a filesystem all nodes share.")
_CONFIG = flags.DEFINE_string("config", None, "Config path relative to the repo.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the sbatch script, submit nothing.")
flags.mark_flags_as_required(["workdir", "config"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sbatch_script(nodes, gpus_per_node, partition, time, job_name, config, workdir,
                  main_args=(), repo=REPO, python=sys.executable) -> str:
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"--nodes={nodes} and --gpus_per_node={gpus_per_node} must be >= 1")
  directives = [f"--job-name={job_name}", f"--nodes={nodes}",
                f"--ntasks-per-node={gpus_per_node}", f"--gpus-per-node={gpus_per_node}",
                f"--time={time}", f"--output={job_name}-%j.out"]
  if partition:
    directives.append(f"--partition={partition}")
  main = [python, "-m", "vidtx.main", "--distributed", f"--config={config}",
          f"--workdir={workdir}", *main_args]
  return "\n".join([
      "#!/bin/bash",
      *(f"#SBATCH {d}" for d in directives),
      "set -euo pipefail",
      f"cd {shlex.quote(repo)}",
      "# One process per GPU; jax.distributed.initialize() reads the SLURM_* variables.",
      f"srun {shlex.join(main)}",
      ""])


def main(argv):
  try:
    script = sbatch_script(_NODES.value, _GPUS.value, _PARTITION.value, _TIME.value,
                           _JOB_NAME.value, _CONFIG.value, _WORKDIR.value, argv[1:])
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _DRY_RUN.value:
    print(script, end="")
    return
  with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
    f.write(script)
  print(f"+ sbatch {f.name}", flush=True)
  sys.exit(subprocess.run(["sbatch", f.name]).returncode)


if __name__ == "__main__":
  app.run(main)
