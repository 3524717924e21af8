"""Launchers: TPU and SLURM dry runs, and a real two-process run through launch/local.sh."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import jax
import pytest

from test_train import ROOT, data_dir, final_params, flag_args  # noqa: F401 (data_dir: fixture)
from vidtx import builder, checkpoint, configuration

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
    assert "Traceback" not in out
  assert not os.path.exists(tmp_path / "checkpoints")


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# Each process of an FSDP run: train, and keep the parameter shards this process held when it
# last saved a checkpoint, to compare with a later restore.
KEEP_SAVED_SHARDS = r"""
import json, sys
import jax, numpy as np
from absl import logging
from vidtx import checkpoint, configuration, sharding, train

logging.set_verbosity(logging.INFO)
logging.set_stderrthreshold(logging.INFO)
sharding.initialize_distributed()
workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
kept = {}
save = checkpoint.Checkpointer.save

def save_and_keep(self, step, state, meta):
  kept.clear()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state["model"])[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    for shard in leaf.addressable_shards:
      where = ",".join(f"{s.start or 0}:{s.stop if s.stop is not None else n}"
                       for s, n in zip(shard.index, leaf.shape))
      kept[f"{name}@{where}"] = np.asarray(shard.data)
  save(self, step, state, meta)

checkpoint.Checkpointer.save = save_and_keep
config = configuration.base()
config.update_from_flattened_dict(overrides)
train.train_and_evaluate(config, workdir)
np.savez(f"{workdir}/kept_{jax.process_index()}.npz", **kept)
"""


def test_sigterm_to_one_host_saves_on_all_and_fsdp_shards_restore_in_one_process(data_dir,
                                                                                  tmp_path):
  from test_train import TINY
  overrides = {**TINY, "data.data_dir": data_dir, "total_steps": 200,
               "checkpoint_every_steps": 1000, "mesh.parallelism": "fsdp"}
  env = {**os.environ, "VIDTX_COORDINATOR": "localhost:%d" % _free_port(),
         "VIDTX_NUM_PROCESSES": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      [sys.executable, "-c", KEEP_SAVED_SHARDS, str(tmp_path), json.dumps(overrides)],
      cwd=ROOT, env={**env, "VIDTX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  # Only process 1 is told to stop, once it has trained a few steps.
  log_1 = []
  for line in procs[1].stdout:
    log_1.append(line)
    if "step 5/200" in line:
      procs[1].send_signal(signal.SIGTERM)
      break
  log_1 = "".join(log_1) + procs[1].communicate(timeout=300)[0]
  log_0 = procs[0].communicate(timeout=300)[0]
  assert procs[0].returncode == procs[1].returncode == 0, log_0[-3000:] + log_1[-3000:]
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in log_0
  saved = [int(log.split("Saved step ")[1].split(" ")[0]) for log in (log_0, log_1)]
  assert saved[0] == saved[1] and 5 <= saved[0] < 200, saved
  assert os.listdir(tmp_path / "checkpoints") == [str(saved[0])]

  # Restore on one device, no FSDP: every shard any process held is there, bit for bit.
  kept = {**np.load(tmp_path / "kept_0.npz"), **np.load(tmp_path / "kept_1.npz")}
  config = configuration.base()
  config.update_from_flattened_dict({**overrides, "mesh.parallelism": ""})
  setup = builder.build(config)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  state, meta = ckpt.restore(setup.abstract_state)
  ckpt.close()
  assert meta["step"] == saved[0]
  params = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(state["model"])[0]}
  qkv_shards = [k for k in kept if k.startswith("encoder/blocks/0/attn/qkv")]
  assert len(qkv_shards) == 4  # split 4 ways over fsdp, 2 per process
  for key, shard in kept.items():
    name, where = key.split("@")
    index = tuple(slice(*map(int, s.split(":"))) for s in where.split(",")) if where else ()
    np.testing.assert_array_equal(params[name][index], shard, err_msg=key)
