"""Cloud TPU launcher: create a TPU VM (or queued resource), copy and install vidtx on every
worker, run `vidtx.main --distributed` on all of them, optionally delete the TPU.

  python launch/tpu.py --name=vidtx-v4 --zone=us-central2-b --project=my-project \
      --accelerator_type=v4-32 --config=configs/mar_k400.py --workdir=gs://bucket/runs/mar \
      --teardown --dry_run -- --config.total_steps=1000

Everything after `--` goes to vidtx.main. --dry_run prints the gcloud commands, one per line,
and runs nothing. The commands are built by pure functions below, so tests can check them.
"""

import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

_NAME = flags.DEFINE_string("name", None, "TPU VM (and queued resource) name.")
_ZONE = flags.DEFINE_string("zone", None, "e.g. us-central2-b.")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project.")
_ACCELERATOR = flags.DEFINE_string("accelerator_type", "v4-8", "e.g. v4-8, v4-32, v5litepod-16.")
_RUNTIME = flags.DEFINE_string("runtime_version", "tpu-ubuntu2204-base", "TPU VM software version.")
_QUEUED = flags.DEFINE_bool("queued", False,
                            "Create through `queued-resources create` (waits for capacity).")
_REUSE = flags.DEFINE_bool("reuse", False, "Skip creation when the TPU already exists.")
_WORKDIR = flags.DEFINE_string("workdir", None, "gs:// directory shared by all workers.")
_CONFIG = flags.DEFINE_string("config", None, "Config path relative to the repo, e.g. "
                              "configs/mar_k400.py:vit_l.")
_TEARDOWN = flags.DEFINE_bool("teardown", False, "Delete the TPU after the run (even if it fails).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")
flags.mark_flags_as_required(["name", "zone", "project", "workdir", "config"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The TPU build of the jax version that setup.py pins.
JAX_TPU = "jax[tpu]>=0.10.2,<0.11"


def check_workdir(workdir: str) -> None:
  """Each worker has its own disk, deleted with the TPU: checkpoints must go to shared storage."""
  if not workdir.startswith("gs://"):
    raise ValueError(
        f"--workdir={workdir!r} is not a gs:// path. Every TPU worker writes its part of each "
        "checkpoint to the workdir, so it must be storage they all share (and that outlives "
        "the TPU VM): use e.g. --workdir=gs://<bucket>/runs/<name>.")


def _where(name, zone, project):
  return [name, f"--zone={zone}", f"--project={project}"]


def create_command(name, zone, project, accelerator_type, runtime_version, queued):
  if queued:
    return ["gcloud", "compute", "tpus", "queued-resources", "create", *_where(name, zone, project),
            f"--node-id={name}", f"--accelerator-type={accelerator_type}",
            f"--runtime-version={runtime_version}"]
  return ["gcloud", "compute", "tpus", "tpu-vm", "create", *_where(name, zone, project),
          f"--accelerator-type={accelerator_type}", f"--version={runtime_version}"]


def describe_command(name, zone, project, queued):
  """Succeeds iff the TPU (queued resource) exists; prints its state."""
  kind = ["queued-resources"] if queued else ["tpu-vm"]
  return ["gcloud", "compute", "tpus", *kind, "describe", *_where(name, zone, project),
          "--format=value(state.state)" if queued else "--format=value(state)"]


def ssh_command(name, zone, project, command: str):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *_where(name, zone, project),
          "--worker=all", f"--command={command}"]


def archive_path(name):
  return f"/tmp/vidtx-{name}.tar.gz"


def copy_commands(name, zone, project, repo=REPO):
  """The working tree (no .git, no virtualenvs) as a tarball to every worker."""
  return [["tar", "-czf", archive_path(name), "--exclude=.git", "--exclude=.venv",
           "--exclude=*.egg-info", "--exclude=__pycache__", "-C", repo, "."],
          ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive_path(name),
           f"{name}:vidtx.tar.gz", "--worker=all", f"--zone={zone}", f"--project={project}"]]


def install_command(name, zone, project):
  remote = ("rm -rf vidtx && mkdir vidtx && tar -xzf vidtx.tar.gz -C vidtx && "
            f"python3 -m pip install -q -e ./vidtx {shlex.quote(JAX_TPU)}")
  return ssh_command(name, zone, project, remote)


def run_command(name, zone, project, config, workdir, main_args=()):
  check_workdir(workdir)
  main = ["python3", "-m", "vidtx.main", "--distributed", f"--config={config}",
          f"--workdir={workdir}", *main_args]
  return ssh_command(name, zone, project, "cd vidtx && " + shlex.join(main))


def delete_command(name, zone, project, queued):
  if queued:  # --force also deletes the TPU VM the queued resource made
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", *_where(name, zone, project),
            "--force", "--quiet"]
  return ["gcloud", "compute", "tpus", "tpu-vm", "delete", *_where(name, zone, project), "--quiet"]


def dry_run_lines(name, zone, project, accelerator_type, runtime_version, queued, reuse, config,
                  workdir, main_args=(), teardown=False, repo=REPO) -> list[str]:
  """What a real run does, as shell lines."""
  where = (name, zone, project)
  create = shlex.join(create_command(*where, accelerator_type, runtime_version, queued))
  if reuse:
    create = f"{shlex.join(describe_command(*where, queued))} || {create}"
  lines = [create]
  if queued:
    lines.append(f"# wait until `{shlex.join(describe_command(*where, queued))}` prints ACTIVE")
  lines += [shlex.join(c) for c in copy_commands(*where, repo)]
  lines += [shlex.join(install_command(*where)),
            shlex.join(run_command(*where, config, workdir, main_args))]
  if teardown:
    lines.append(shlex.join(delete_command(*where, queued)))
  return lines


def _run(command, **kwargs):
  print("+", shlex.join(command), flush=True)
  return subprocess.run(command, **kwargs)  # output streams straight to our terminal


def _wait_active(where, queued, poll_s=30):
  while True:
    state = _run(describe_command(*where, queued), capture_output=True, text=True).stdout.strip()
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise RuntimeError(f"queued resource {where[0]} is {state}; see `gcloud compute tpus "
                         f"queued-resources describe {where[0]}`")
    print(f"queued resource {where[0]}: {state or 'not visible yet'}; waiting", flush=True)
    time.sleep(poll_s)


def main(argv):
  main_args = argv[1:]  # after `--`
  try:
    check_workdir(_WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  where = (_NAME.value, _ZONE.value, _PROJECT.value)
  if _DRY_RUN.value:
    print("\n".join(dry_run_lines(*where, _ACCELERATOR.value, _RUNTIME.value, _QUEUED.value,
                                  _REUSE.value, _CONFIG.value, _WORKDIR.value, main_args,
                                  _TEARDOWN.value)))
    return
  exists = _REUSE.value and _run(describe_command(*where, _QUEUED.value),
                                 capture_output=True).returncode == 0
  if not exists:
    _run(create_command(*where, _ACCELERATOR.value, _RUNTIME.value, _QUEUED.value), check=True)
  try:
    if _QUEUED.value:
      _wait_active(where, _QUEUED.value)
    for command in copy_commands(*where):
      _run(command, check=True)
    _run(install_command(*where), check=True)
    rc = _run(run_command(*where, _CONFIG.value, _WORKDIR.value, main_args)).returncode
  finally:
    if _TEARDOWN.value:  # also after a failure: an idle TPU still bills
      _run(delete_command(*where, _QUEUED.value), check=True)
  sys.exit(rc)


if __name__ == "__main__":
  app.run(main)
