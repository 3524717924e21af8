"""Launchers: TPU and SLURM dry runs, and a real two-process run through launch/local.sh."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import ROOT, data_dir, final_params, flag_args  # noqa: F401 (data_dir: fixture)

TPU_ARGS = ["--name=vidtx-pod", "--zone=us-central2-b", "--project=proj",
            "--accelerator_type=v4-32", "--config=configs/mar_k400.py:vit_l"]


def launch(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_tpu_dry_run_prints_create_copy_install_run():
  out = launch("tpu.py", *TPU_ARGS, "--workdir=gs://bucket/runs/mar", "--dry_run", "--",
               "--config.total_steps=1000")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 5
  create, archive, scp, install, run = lines
  assert create.startswith("gcloud compute tpus tpu-vm create vidtx-pod ")
  assert "--zone=us-central2-b --project=proj --accelerator-type=v4-32" in create
  assert archive.startswith("tar -czf /tmp/vidtx-vidtx-pod.tar.gz ") and f"-C {ROOT} ." in archive
  assert scp.startswith("gcloud compute tpus tpu-vm scp /tmp/vidtx-vidtx-pod.tar.gz "
                        "vidtx-pod:vidtx.tar.gz --worker=all")
  assert "tpu-vm ssh vidtx-pod" in install and "--worker=all" in install
  assert "pip install -q -e ./vidtx" in install
  assert "tpu-vm ssh vidtx-pod" in run and "--worker=all" in run
  assert ("'--command=cd vidtx && python3 -m vidtx.main --distributed "
          "--config=configs/mar_k400.py:vit_l --workdir=gs://bucket/runs/mar "
          "--config.total_steps=1000'") in run
  assert "delete" not in out.stdout  # no --teardown


def test_tpu_dry_run_queued_reuse_teardown():
  out = launch("tpu.py", *TPU_ARGS, "--workdir=gs://bucket/x", "--queued", "--reuse",
               "--teardown", "--dry_run")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  # --reuse: create only when describe fails.
  describe, create = lines[0].split(" || ")
  assert describe.startswith("gcloud compute tpus queued-resources describe vidtx-pod ")
  assert create.startswith("gcloud compute tpus queued-resources create vidtx-pod ")
  assert "--node-id=vidtx-pod" in create and "--runtime-version=" in create
  assert lines[1].startswith("# wait until") and "ACTIVE" in lines[1]
  assert lines[-1] == ("gcloud compute tpus queued-resources delete vidtx-pod "
                       "--zone=us-central2-b --project=proj --force --quiet")
  assert "--distributed" in lines[-2] and "--workdir=gs://bucket/x" in lines[-2]


def test_tpu_refuses_a_local_workdir():
  out = launch("tpu.py", *TPU_ARGS, "--workdir=/tmp/runs/mar", "--dry_run")
  assert out.returncode != 0 and out.stdout == ""
  assert "--workdir='/tmp/runs/mar' is not a gs:// path" in out.stderr
  assert "Traceback" not in out.stderr


def test_slurm_dry_run_prints_the_sbatch_script():
  out = launch("slurm.py", "--nodes=2", "--gpus_per_node=8", "--partition=gpu", "--time=2:00:00",
               "--job_name=mar", "--config=configs/mar_k400.py", "--workdir=/shared/runs/mar",
               "--dry_run", "--", "--config.total_steps=1000")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == "#!/bin/bash"
  assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
          "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00", "#SBATCH --job-name=mar"
          } <= set(lines)
  assert f"cd {ROOT}" in lines
  assert lines[-1] == (f"srun {sys.executable} -m vidtx.main --distributed "
                       "--config=configs/mar_k400.py --workdir=/shared/runs/mar "
                       "--config.total_steps=1000")


def test_local_sh_stops_the_others_and_fails_when_one_process_fails(tmp_path):
  # A stand-in vidtx.main: process 1 fails at once, process 0 would run for a minute.
  (tmp_path / "vidtx").mkdir()
  (tmp_path / "vidtx" / "main.py").write_text(
      "import os, sys, time\n"
      "i = os.environ['VIDTX_PROCESS_ID']\n"
      "print('started', i, os.environ['VIDTX_NUM_PROCESSES'], os.environ['XLA_FLAGS'],\n"
      "      flush=True)\n"
      "sys.exit(3) if i == '1' else time.sleep(60)\n")
  out = subprocess.run([os.path.join(ROOT, "launch", "local.sh"), "2"], cwd=tmp_path, timeout=30,
                       env={**os.environ, "PYTHON": sys.executable, "VIDTX_LOCAL_DEVICES": "3"},
                       capture_output=True, text=True)
  assert out.returncode == 3
  assert "[1] started 1 2  --xla_force_host_platform_device_count=3" in out.stdout
  assert "process 1 exited with status 3; stopping the others" in out.stderr


def test_two_processes_train_and_the_checkpoint_restores_in_one(data_dir, tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [os.path.join(ROOT, "launch", "local.sh"), "2", f"--config={ROOT}/configs/demo.py",
       f"--workdir={workdir}",
       *flag_args(data_dir, total_steps=6, checkpoint_every_steps=6)],
      cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
  for i in range(2):
    assert f"[{i}] " in out.stdout and f"Process {i} of 2: 1 local devices, 2 in all" in out.stdout
  assert out.stdout.count("on 2 devices, mesh {'data': 2") == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["6"]
  assert json.load(open(workdir / "eval_metrics.json"))["num_examples"] == 40
  # Both processes computed the same global step: their logged losses agree.
  losses = [line.split("step 6/6: ")[1].split(", ")[2] for line in out.stdout.splitlines()
            if "step 6/6: " in line]
  assert len(losses) == 2 and losses[0] == losses[1], losses
  meta, params = final_params(str(workdir), data_dir)
  assert meta["step"] == 6 and meta["data_position"] == 6
  assert all(np.isfinite(p).all() for p in params)


def test_processes_that_disagree_on_the_config_stop_with_an_error(data_dir, tmp_path):
  env = {**os.environ, "VIDTX_COORDINATOR": "localhost:%d" % _free_port(),
         "VIDTX_NUM_PROCESSES": "2"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vidtx.main", f"--config={ROOT}/configs/demo.py",
       f"--workdir={tmp_path}", *flag_args(data_dir, total_steps=6 + i)],
      cwd=ROOT, env={**env, "VIDTX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode != 0
    assert "processes disagree on the config: processes [1] differ from process 0" in out, \
        out[-3000:]
  assert not os.path.exists(tmp_path / "checkpoints")


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
