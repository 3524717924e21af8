"""End-to-end training on the synthetic data: learning, resume, devices, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from vidtx import builder, checkpoint, configuration, errors, evaluate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model and dataset so each run compiles and trains in seconds.
TINY = {
    "model.width": 32, "model.depth": 2, "model.num_heads": 4, "model.patch_size": (2, 8, 8),
    "data.num_frames": 4, "data.synthetic.num_train": 32, "data.synthetic.num_val": 40,
    "data.synthetic.num_shards": 2, "batch_size": 16, "optim.warmup_steps": 5,
    "eval_every_steps": 0, "log_every_steps": 1,
}


def tiny_config(data_dir, **overrides):
  c = configuration.base()
  c.update_from_flattened_dict({**TINY, "data.data_dir": data_dir, **overrides})
  c.lock()
  return c


def flag_args(data_dir, **overrides):
  def fmt(v):
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
  return [f"--config.{k}={fmt(v)}"
          for k, v in {**TINY, "data.data_dir": data_dir, **overrides}.items()]


def main_command(workdir, data_dir, **overrides):
  return [sys.executable, "-m", "vidtx.main", f"--config={ROOT}/configs/demo.py",
          f"--workdir={workdir}", *flag_args(data_dir, **overrides)]


def run_main(workdir, data_dir, env=None, **overrides):
  return subprocess.run(main_command(workdir, data_dir, **overrides), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from vidtx import data
  path = str(tmp_path_factory.mktemp("synthetic"))
  data.prepare(tiny_config(path).data, str(tmp_path_factory.mktemp("unused")))
  return path


def final_params(workdir, data_dir, **overrides):
  config = tiny_config(data_dir, **overrides)
  setup = builder.build(config, mesh=None)
  ckpt = checkpoint.Checkpointer(workdir, keep=3)
  state, meta = ckpt.restore(setup.abstract_state)
  ckpt.close()
  return meta, jax.tree.map(np.asarray, jax.tree.leaves(state))


def untrained_run(config, workdir, step):
  """A workdir as training leaves it (config.json and a checkpoint at `step`), with the
  model's initial weights."""
  setup = builder.build(config)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  ckpt.save(step, state, {"step": step, "data_position": step, "rng": [0, 0]})
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))


def scalars(workdir, tag):
  """{step: value} of a scalar that the run wrote to TensorBoard."""
  out = {}
  for path in tf.io.gfile.glob(os.path.join(workdir, "tensorboard", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out


def truncate(path, fraction):
  """Cuts a shard to `fraction` of its size, as a copy that did not finish; returns how many
  whole records are left, read from the TFRecord framing (8-byte length, 4-byte CRC, data,
  4-byte CRC) rather than by TensorFlow."""
  with open(path, "rb") as f:
    data = f.read()
  size = int(len(data) * fraction)
  with open(path, "wb") as f:
    f.write(data[:size])
  whole, offset = 0, 0
  while offset + 12 <= size:
    offset += 16 + int.from_bytes(data[offset:offset + 8], "little")
    if offset > size:
      break
    whole += 1
  return whole


def test_training_learns_and_writes_summaries_and_checkpoints(data_dir, tmp_path):
  config = tiny_config(data_dir, total_steps=60, checkpoint_every_steps=20,
                       **{"optim.lr": 3e-3})
  metrics = train.train_and_evaluate(config, str(tmp_path))
  losses = scalars(str(tmp_path), "train/loss")
  assert sorted(losses) == list(range(1, 61))
  assert np.mean([losses[s] for s in range(51, 61)]) < 0.8 * np.mean(
      [losses[s] for s in range(1, 11)])
  assert metrics["num_examples"] == 40 and 0 <= metrics["top1"] <= metrics["top5"] <= 1
  assert set(scalars(str(tmp_path), "eval/top1")) == {60}
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40", "60"]
  saved = json.load(open(tmp_path / "eval_metrics.json"))
  assert saved["step"] == 60 and saved["top1"] == pytest.approx(metrics["top1"])
  # --mode=eval on the same workdir reproduces the final evaluation.
  again = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert again["top1"] == pytest.approx(metrics["top1"]) and again["step"] == 60


def test_masked_training_runs_and_evaluates_on_the_test_mask(data_dir, tmp_path, monkeypatch):
  from vidtx.models import masking
  seen = []
  original = masking.keep_indices
  monkeypatch.setattr(masking, "keep_indices",
                      lambda name, key, *a: seen.append(key is None) or original(name, key, *a))
  config = tiny_config(data_dir, total_steps=6, checkpoint_every_steps=6,
                       **{"model.masking": "cell_running", "model.mask_ratio": 0.5})
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["num_examples"] == 40
  # Traced keyed for the memory estimate and the train step, with the fixed mask for eval.
  assert seen == [False, False, True]


def test_frozen_parameters_stay_as_initialised_through_training(data_dir, tmp_path):
  overrides = {"optim.frozen": ("^encoder/patch_embed/",), "optim.warmup_steps": 1}
  config = tiny_config(data_dir, total_steps=2, checkpoint_every_steps=2, **overrides)
  train.train_and_evaluate(config, str(tmp_path))
  setup = builder.build(config)
  with jax.set_mesh(setup.mesh):
    initial = nnx.state(nnx.merge(setup.graphdef, builder.init_state(setup))["model"], nnx.Param)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  state, _ = ckpt.restore(setup.abstract_state)
  ckpt.close()
  trained = nnx.state(nnx.merge(setup.graphdef, state)["model"], nnx.Param)
  patch = lambda s: np.asarray(s["encoder"]["patch_embed"]["kernel"][...])
  qkv = lambda s: np.asarray(s["encoder"]["blocks"][0]["attn"]["qkv"][...])
  np.testing.assert_array_equal(patch(trained), patch(initial))
  assert not np.allclose(qkv(trained), qkv(initial))


def test_mixup_cutmix_and_label_smoothing_reach_the_train_step(data_dir, tmp_path, monkeypatch):
  from vidtx.data import mixup
  calls = []
  original = mixup.mix
  monkeypatch.setattr(mixup, "mix", lambda key, video, labels, **kw: calls.append(
      (video.shape, kw)) or original(key, video, labels, **kw))
  config = tiny_config(data_dir, total_steps=5, checkpoint_every_steps=5, label_smoothing=0.1,
                       grad_accum_steps=2, **{"data.mixup_alpha": 0.8, "data.cutmix_alpha": 1.0,
                                              "optim.warmup_steps": 1})
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"])
  # Traced in the train step, on micro-batches of 16 / 2 clips.
  assert {shape for shape, _ in calls} == {(8, 4, 32, 32, 3)}
  assert all(kw == {"num_classes": 8, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                    "switch_prob": 0.5, "label_smoothing": 0.1} for _, kw in calls)
  train_loss = scalars(str(tmp_path), "train/ce_loss")
  assert sorted(train_loss) == [1, 2, 3, 4, 5] and all(np.isfinite(list(train_loss.values())))


MASKED = {"model.name": "mae", "model.mae.decoder_width": 16, "model.mae.decoder_depth": 1,
          "model.mae.decoder_heads": 2, "model.mae.bridge_width": 32, "model.mae.bridge_depth": 1}


def test_pretraining_then_mar_fine_tuning_from_it(data_dir, tmp_path):
  pretrain = {**MASKED, "model.masking": "tube", "model.mask_ratio": 0.75, "optim.lr": 3e-3,
              "total_steps": 20, "checkpoint_every_steps": 20}
  metrics = train.train_and_evaluate(tiny_config(data_dir, **pretrain), str(tmp_path / "pre"))
  assert set(metrics) == {"recon_mse", "num_examples", "num_skipped"}  # nothing to classify
  assert 0 < metrics["recon_mse"] < 2
  mse = scalars(str(tmp_path / "pre"), "train/recon_mse")
  # Evaluation draws its masks from a fixed key: the same number twice.
  again = evaluate.evaluate_checkpoint(tiny_config(data_dir, **pretrain), str(tmp_path / "pre"))
  assert again["recon_mse"] == pytest.approx(metrics["recon_mse"])

  mar = {**MASKED, "model.mae.classifier": "bridge", "model.masking": "cell_running",
         "model.mask_ratio": 0.5, "model.mae.recon_weight": 0.1, "total_steps": 4,
         "checkpoint_every_steps": 4, "init_from": str(tmp_path / "pre"),
         "optim.warmup_steps": 1}
  metrics = train.train_and_evaluate(tiny_config(data_dir, **mar), str(tmp_path / "mar"))
  assert {"top1", "top5", "loss"} <= set(metrics) and "recon_mse" not in metrics
  ce, recon, loss = (scalars(str(tmp_path / "mar"), f"train/{k}")
                     for k in ("ce_loss", "recon_mse", "loss"))
  assert loss[1] == pytest.approx(ce[1] + 0.1 * recon[1], rel=1e-5)
  # The decoder came pre-trained: MAR starts near the pre-training's reconstruction error.
  assert recon[1] < np.mean([mse[s] for s in range(1, 6)])


def test_kinetics_config_without_data_says_how_to_prepare_it(tmp_path):
  out = subprocess.run([sys.executable, "-m", "vidtx.main", f"--config={ROOT}/configs/mar_k400.py",
                        f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "'kinetics400'" in out.stderr and "config.data.data_dir" in out.stderr
  assert "--config.data.name=synthetic_motion" in out.stderr


def _wait_for_checkpoint(proc, workdir, min_step):
  directory = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be interrupted"
    if os.path.isdir(directory) and any(
        d.isdigit() and int(d) >= min_step for d in os.listdir(directory)):
      return
    time.sleep(0.05)
  raise TimeoutError("no checkpoint appeared")


# Long enough that the run is still going when its first checkpoint appears.
# Drop path and the device's augmentation draw from the step's key: a resume must repeat them.
RESUME_STEPS = {"total_steps": 120, "checkpoint_every_steps": 10, "log_every_steps": 20,
                "model.drop_path": 0.1, "data.randaugment_layers": 2, "data.color_jitter": 0.4,
                "data.random_erasing": 0.5}


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  """Final (meta, params) of a run that was never interrupted."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  assert run_main(workdir, data_dir, **RESUME_STEPS).returncode == 0
  return final_params(workdir, data_dir, **RESUME_STEPS)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_bit_exactly(data_dir, uninterrupted, tmp_path, sig):
  steps = RESUME_STEPS
  interrupted = tmp_path / "interrupted"
  proc = subprocess.Popen(main_command(interrupted, data_dir, **steps), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_checkpoint(proc, str(interrupted), 10)
  proc.send_signal(sig)
  log = proc.communicate(timeout=120)[0]
  if sig == signal.SIGTERM:
    assert proc.returncode == 0 and "after SIGTERM" in log, log[-2000:]
  else:
    assert proc.returncode == -signal.SIGKILL
  stopped_at = max(int(d) for d in os.listdir(interrupted / "checkpoints") if d.isdigit())
  assert 10 <= stopped_at < 120

  resumed = run_main(interrupted, data_dir, **steps)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"Resuming at step {stopped_at} of 120" in resumed.stderr

  meta_a, params_a = uninterrupted
  meta_b, params_b = final_params(interrupted, data_dir, **steps)
  assert meta_a == meta_b and meta_a["step"] == 120
  for a, b in zip(params_a, params_b, strict=True):
    np.testing.assert_array_equal(a, b)


def test_eight_devices_follow_the_one_device_loss_curve(data_dir, tmp_path):
  steps = {"total_steps": 8, "checkpoint_every_steps": 8}
  one = run_main(tmp_path / "one", data_dir, **steps)
  assert one.returncode == 0, one.stderr[-2000:]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  # data x fsdp x tensor = 2 x 2 x 2: batch, parameters and heads all split.
  eight = run_main(tmp_path / "eight", data_dir, env=env, **steps,
                   **{"mesh.shape": (2, 2, 2)})
  assert eight.returncode == 0, eight.stderr[-2000:]
  assert "on 8 devices" in eight.stderr
  a, b = scalars(str(tmp_path / "one"), "train/loss"), scalars(str(tmp_path / "eight"),
                                                               "train/loss")
  assert sorted(a) == sorted(b) == list(range(1, 9))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)


def test_unknown_and_impossible_fields_stop_at_start_naming_them(data_dir, tmp_path):
  unknown = run_main(tmp_path, data_dir, **{"optim.learning_rate": 0.1})
  assert unknown.returncode != 0 and "learning_rate" in unknown.stderr
  bad = run_main(tmp_path, data_dir, **{"data.num_frames": 5})
  assert bad.returncode != 0
  assert "config.data.num_frames=5" in bad.stderr and "tubelet" in bad.stderr
  assert "Traceback" not in bad.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_data_directory_names_the_field(tmp_path):
  config = tiny_config(str(tmp_path / "nowhere"), **{"data.name": "kinetics400"})
  with pytest.raises(FileNotFoundError, match="data_dir") as err:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert str(tmp_path / "nowhere") in str(err.value)
  assert not os.path.exists(tmp_path / "work")  # no empty workdir left behind


def test_a_run_that_fails_at_start_removes_the_workdir_it_made(data_dir, tmp_path):
  # The synthetic data names 8 classes in its labels.json.
  wrong = tiny_config(data_dir, **{"data.num_classes": 400})
  with pytest.raises(errors.ConfigError, match=r"^config.data.num_classes=400: the "
                     r"dataset's labels.json names 8 classes: set --config.data.num_classes=8$"):
    train.train_and_evaluate(wrong, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new")
  # Failing after the workdir is made (a missing init_from): removed, with what it held.
  missing = tiny_config(data_dir, init_from=str(tmp_path / "no_such_run"))
  with pytest.raises(errors.ConfigError, match="init_from=.*no_such_run.*no checkpoint"):
    train.train_and_evaluate(missing, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new")
  # A workdir that was there before is kept, with everything in it.
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "notes.txt").write_text("mine")
  with pytest.raises(errors.ConfigError, match="init_from=.*no_such_run.*no checkpoint"):
    train.train_and_evaluate(missing, str(tmp_path / "old"))
  assert (tmp_path / "old" / "notes.txt").read_text() == "mine"


def test_the_train_split_can_be_evaluated(data_dir, tmp_path):
  """--mode=eval --config.data.eval_split=train: the split is read as evaluation reads it."""
  config = tiny_config(data_dir, **{"data.eval_split": "train"})
  untrained_run(config, str(tmp_path), 3)
  metrics = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert metrics["step"] == 3 and metrics["num_examples"] == 32 and metrics["num_skipped"] == 0
  assert 0 <= metrics["top1"] <= metrics["top5"] <= 1


def test_a_truncated_shard_is_used_up_to_the_cut_and_the_loss_counted(data_dir, tmp_path,
                                                                       monkeypatch, caplog):
  from vidtx import data
  copy = str(tmp_path / "data")
  shutil.copytree(data_dir, copy)
  # 2 train shards of 16 clips, 2 validation shards of 20 (metadata.json has their counts).
  train_shard, eval_shard = (os.path.join(copy, f"{split}-0000{k}-of-00002.tfrecord")
                             for split, k in (("train", 0), ("validation", 1)))
  train_lost, eval_lost = 16 - truncate(train_shard, 0.6), 20 - truncate(eval_shard, 0.6)
  assert train_lost > 0 and eval_lost > 0

  streams, closed_at_eval = [], []
  build, run_eval = data.build, evaluate.evaluate
  monkeypatch.setattr(data, "build", lambda *a, train, **kw: (
      streams.append(build(*a, train=train, **kw)) or streams[-1] if train
      else build(*a, train=train, **kw)))
  monkeypatch.setattr(evaluate, "evaluate", lambda *a: (
      closed_at_eval.append([s.closed for s in streams]) or run_eval(*a)))

  config = tiny_config(copy, total_steps=4, checkpoint_every_steps=4, **{"optim.warmup_steps": 1})
  metrics = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert metrics["num_skipped"] == eval_lost and metrics["num_examples"] == 40 - eval_lost
  # 2 batches per epoch of all 32 records; the stream reads up to 2 batches ahead.
  skipped = scalars(str(tmp_path / "work"), "train/skipped_records")
  assert 2 * train_lost <= skipped[4] <= 3 * train_lost
  for shard in (train_shard, eval_shard):
    assert len([r for r in caplog.records if r.levelname == "WARNING"
                and shard in r.getMessage()]) == 1
  # The train pipeline stopped before the final evaluation, not at garbage collection.
  assert closed_at_eval == [[True]]
