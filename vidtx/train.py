"""The one training loop: build, restore, step, evaluate, checkpoint, log."""

import collections
import json
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax import nnx
from jax.sharding import PartitionSpec as P

from vidtx import (builder, checkpoint, data, evaluate, memory, models, optim, precise_bn,
                   sharding)
from vidtx.data import mixup, on_device
from vidtx.models import layers, masking


def make_train_step(setup: builder.Setup):
  """jit: (state, batch, rng, stop) -> (state, metrics). The state is donated.

  `stop` holds every process's SIGTERM flag (see `stop_flags`); metrics["stop"] is their
  maximum, so all processes see the same value and stop at the same step. With
  `grad_accum_steps` k > 1 the batch is cut into k micro-batches that run one after the other
  (a scan, so one is compiled), and their mean gradient makes one update.
  """
  config = setup.config
  k = config.grad_accum_steps
  classifies = models.classifies(config.model)
  micro_sharding = jax.sharding.NamedSharding(setup.mesh, P(None, *setup.batch_sharding.spec))
  batch_spec = setup.batch_sharding.spec
  preprocess = on_device.sharded_train_clips(config.data, setup.mesh, batch_spec)

  def loss_and_metrics(graphdef, params, rest, video, labels, key):
    keep = masking.for_config(config.model, config.data, jax.random.fold_in(key, 1),
                              labels.shape[0])
    if classifies:  # mixup / cutmix (off by default) and label smoothing
      d = config.data
      video, targets = mixup.mix(jax.random.fold_in(key, 2), video, labels,
                                 num_classes=d.num_classes, mixup_alpha=d.mixup_alpha,
                                 cutmix_alpha=d.cutmix_alpha, switch_prob=d.mix_switch_prob,
                                 label_smoothing=config.label_smoothing)
    # A copy: the forward pass may update BatchNorm statistics, which belong to this trace.
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = model(video, train=True, key=key, keep=keep)
    loss = aux.pop("loss", 0.0)  # a model's own weighted loss terms, per example
    metrics = {k: v.mean() for k, v in aux.items()}
    if logits is not None:
      ce = optax.softmax_cross_entropy(logits, targets)
      loss = loss + ce
      metrics.update(ce_loss=ce.mean(), top1=evaluate.topk_correct(logits, labels, 1).mean(),
                     top5=evaluate.topk_correct(logits, labels, 5).mean())
    loss = jnp.mean(loss)
    # BatchNorm's running statistics (ILA), as this forward pass updated them; empty for most.
    return loss, ({**metrics, "loss": loss}, nnx.state(model, nnx.BatchStat))

  def train_step(state, batch, rng, stop):
    merged = nnx.merge(setup.graphdef, state)
    model, optimizer = merged["model"], merged["optimizer"]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The step's randomness depends only on the root key and the step: resumes are exact.
    key, data_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(rng), optimizer.step[...]))
    # The host sends uint8 clips; the rest of their preprocessing happens here, on the device.
    video = preprocess(batch["video"], data_key, jnp.arange(batch["video"].shape[0]))
    grad_fn = jax.grad(loss_and_metrics, argnums=1, has_aux=True)
    if k == 1:
      grads, (metrics, batch_stats) = grad_fn(graphdef, params, rest, video, batch["label"],
                                              key)
    else:
      # Micro-batch i takes every k-th clip from i on, so each device keeps its own clips.
      micro = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
              x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), micro_sharding),
          {"video": video, "label": batch["label"]})

      def accumulate(total, i_batch):
        i, mb = i_batch
        grads, aux = grad_fn(graphdef, params, rest, mb["video"], mb["label"],
                             jax.random.fold_in(key, i))
        return jax.tree.map(lambda a, b: a + b / k, total, (grads, aux)), None

      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(
          lambda x: jnp.zeros(x.shape, x.dtype),
          jax.eval_shape(grad_fn, graphdef, params, rest, first["video"], first["label"], key))
      # Running statistics too are averaged: each micro-batch's update starts from the same
      # ones, so their mean is one update with the micro-batches' mean statistics.
      (grads, (metrics, batch_stats)), _ = jax.lax.scan(accumulate, zeros,
                                                        (jnp.arange(k), micro))
    nnx.update(model, batch_stats)
    optimizer.update(model, grads)
    metrics.update(grad_norm=optax.tree.norm(grads), stop=jnp.max(stop))
    return nnx.state({"model": model, "optimizer": optimizer}), metrics

  replicated = sharding.replicated(setup.mesh)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(setup.state_shardings, setup.batch_sharding, replicated,
                               _stop_sharding(setup.mesh)),
                 out_shardings=(setup.state_shardings, replicated))


def _stop_sharding(mesh):
  return jax.sharding.NamedSharding(mesh, P(mesh.axis_names))


def stop_flags(mesh, requested: bool) -> jax.Array:
  """[devices] int32: this process's SIGTERM flag on each of its devices."""
  local = np.full((jax.local_device_count(),), int(requested), np.int32)
  return jax.make_array_from_process_local_data(_stop_sharding(mesh), local)


def compile_train_step(setup: builder.Setup):
  """The train step compiled ahead of the first batch; logs the memory figures per device."""
  config, d = setup.config, setup.config.data
  logging.info("Memory per device, estimated before compiling: %s.",
               memory.describe(memory.estimate(setup)))
  batch = {
      "video": jax.ShapeDtypeStruct((config.batch_size, d.num_frames, d.crop_size, d.crop_size,
                                     3), jnp.uint8, sharding=setup.batch_sharding),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                    sharding=setup.batch_sharding),
  }
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  stop = jax.ShapeDtypeStruct((jax.device_count(),), jnp.int32)
  start = time.time()
  compiled = make_train_step(setup).lower(setup.abstract_state, batch, rng, stop).compile()
  logging.info("Compiled the train step in %.1f s; XLA's memory per device: %s.",
               time.time() - start, memory.describe(memory.compiled(compiled)))
  return compiled


class _Preemption:
  """Turns SIGTERM (what TPU VMs, SLURM and `kill` send) into a save-and-exit request."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("Received signal %d: saving a checkpoint at the next step, then exiting.",
                    signum)
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _device_prefetch(batches, batch_sharding, size: int = 2):
  """Starts host->device copies `size` batches ahead of the step that needs them."""
  queue = collections.deque()
  for batch in batches:
    queue.append(sharding.to_global(batch, batch_sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns eval metrics.

  A run that fails before its first step (missing data, a wrong class count, a bad init_from)
  removes the workdir it created, so the next try starts clean; an existing workdir is kept.
  """
  setup = builder.build(config)
  # Before anything collective (orbax, the step), so a mismatch is an error, not a hang.
  sharding.check_processes_agree("config", config.to_json())
  # Removed again if this run fails at start: it did not exist, so nothing in it is older.
  new_workdir = not os.path.lexists(workdir)
  try:
    data_dir = builder.prepare_data(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  except BaseException:
    _remove_new_workdir(workdir, new_workdir)
    raise

  train_data, preemption, first_step, failed_at_start = None, None, None, False
  try:
    with jax.set_mesh(setup.mesh):
      if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(setup.abstract_state)
        step, rng = meta["step"], np.asarray(meta["rng"], np.uint32)
        data_position = meta["data_position"]
        logging.info("Resuming at step %d of %d.", step, config.total_steps)
      else:
        state = builder.init_state(setup)
        if config.init_from:
          family = models.family(config.model)
          # Position tables are resized to the token grid; families without tubelets have none.
          grid = masking.token_grid(config.model, config.data) if family.tubelets else None
          state = checkpoint.init_from(state, config.init_from, family, grid,
                                       config.init_from_inflation)
        step, data_position = 0, 0
        rng = np.asarray(jax.random.key_data(jax.random.key(config.seed)), np.uint32)
        param_count = layers.count_params(setup.abstract_state["model"])
        logging.info("Training %s (%s parameters) on %d devices, mesh %s, from %s.",
                     config.model.name, f"{param_count:,}", jax.device_count(),
                     dict(setup.mesh.shape), config.init_from or "scratch")
      first_step = step

      sharding.check_processes_agree("step to start from", str(step))
      train_step = compile_train_step(setup)
      rng_array = jax.make_array_from_process_local_data(sharding.replicated(setup.mesh), rng)
      eval_step = evaluate.make_eval_step(setup)
      lr_schedule = optim.schedule(config.optim, config.total_steps)

      def save(step):
        ckpt.save(step, state, {"step": step, "data_position": data_position,
                                "rng": rng.tolist()})

      def run_eval(step):
        metrics = evaluate.evaluate(eval_step, state, evaluate.eval_batches(setup, data_dir),
                                    setup.batch_sharding)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        writer.flush()
        logging.info("eval at step %d over %d clips: %s", step, metrics["num_examples"],
                     evaluate.describe(metrics))
        return metrics

      precise = (precise_bn.PreciseBatchNorm(setup) if config.model.bn.precise_batches
                 else None)

      def precise_statistics(state, step):
        """Precise BN (config.model.bn.precise_batches) before an evaluation and its step's
        checkpoint, over the training batches that follow `step`."""
        if precise is None:
          return state
        start = time.time()
        batches = data.build(config.data, config.data.train_split, train=True,
                             batch_size=config.batch_size // jax.process_count(),
                             seed=config.seed, start_batch=step,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), data_dir=data_dir)
        try:
          state = precise(state, _device_prefetch(batches, setup.batch_sharding),
                          config.model.bn.precise_batches, rng_array, step)
        finally:
          batches.close()
        logging.info("Precise BN at step %d: BatchNorm statistics recomputed over %d training "
                     "batches in %.1f s.", step, config.model.bn.precise_batches,
                     time.time() - start)
        return state

      train_data = data.build(config.data, config.data.train_split, train=True,
                              batch_size=config.batch_size // jax.process_count(),
                              seed=config.seed, start_batch=data_position,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), data_dir=data_dir)
      train_batches = _device_prefetch(train_data, setup.batch_sharding)

      preemption = _Preemption()
      pending, last_log = [], (step, time.time())
      previous_stop = None  # read one step late, so the host does not wait for every step
      while step < config.total_steps:
        state, metrics = train_step(state, next(train_batches), rng_array,
                                    stop_flags(setup.mesh, preemption.requested))
        # Every process reads the same all-process flag, so all save the same step.
        stop, previous_stop = previous_stop, metrics.pop("stop")
        step += 1
        data_position += 1
        pending.append(metrics)
        if step % config.log_every_steps == 0 or step == config.total_steps:
          # Fetching metrics only here keeps the host from waiting on every step.
          means = {f"train/{k}": float(np.mean(v))
                   for k, v in jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *pending))
                   .items()}
          now = time.time()
          steps_per_s = (step - last_log[0]) / (now - last_log[1])
          eta = (config.total_steps - step) / steps_per_s
          # Records that failed to decode or were lost since this process started (this
          # host's).
          means["train/skipped_records"] = train_data.skipped
          writer.write_scalars(step, {**means, "train/lr": float(lr_schedule(step - 1)),
                                      "train/steps_per_s": steps_per_s})
          logging.info("step %d/%d: %s, %.2f steps/s, ETA %s", step, config.total_steps,
                       evaluate.describe({k.removeprefix("train/"): v for k, v in means.items()}),
                       steps_per_s, _format_duration(eta))
          pending, last_log = [], (step, now)
        if stop is not None and bool(stop):
          save(step)
          ckpt.wait()
          logging.warning("Saved step %d after SIGTERM (to this or another process); rerun the "
                          "same command to resume.", step)
          return {}
        eval_due = (config.eval_every_steps and step % config.eval_every_steps == 0
                    and step < config.total_steps)
        if eval_due:
          state = precise_statistics(state, step)
        if step % config.checkpoint_every_steps == 0 and step < config.total_steps:
          save(step)
        if eval_due:
          run_eval(step)
      # The last step is taken: the train pipeline stops now, not decoding batches beside the
      # final evaluation.
      train_data.close()
      # A resumed finished run recomputes the statistics its last checkpoint holds: the same.
      state = precise_statistics(state, step)
      if ckpt.latest_step() != step:
        save(step)
      metrics = run_eval(step)
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
          json.dump({"step": step, **metrics}, f, indent=2)
      return metrics
  except BaseException:
    failed_at_start = first_step is None or step == first_step  # before any step was taken
    raise
  finally:
    if train_data is not None:
      train_data.close()
    if preemption is not None:
      preemption.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()
    if failed_at_start:
      _remove_new_workdir(workdir, new_workdir)


def _remove_new_workdir(workdir: str, new: bool) -> None:
  """Removes the workdir of a run that failed at start if the run created it (new): what it
  holds (config.json, empty summaries, generated data) is of no use to the next try."""
  if new and os.path.isdir(workdir):
    logging.info("Removing %s, which this run created before it failed.", workdir)
    shutil.rmtree(workdir, ignore_errors=True)
