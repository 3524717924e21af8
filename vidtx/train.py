"""The one training loop: build, restore, step, evaluate, checkpoint, log."""

import collections
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax import nnx
from jax.sharding import PartitionSpec as P

from vidtx import checkpoint, configuration, data, evaluate, memory, models, optim, sharding
from vidtx.data import mixup
from vidtx.models import layers, masking, vit


@dataclasses.dataclass
class Setup:
  """Everything the loop and evaluation need, built once from the config."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  abstract_state: nnx.State  # ShapeDtypeStructs with the mesh's shardings
  state_shardings: nnx.State
  batch_sharding: jax.sharding.NamedSharding
  create: Callable[[], tuple[nnx.Module, nnx.Optimizer]]  # builds model and optimizer


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Setup:
  """Validates the config, builds the mesh and the (abstract) model + optimizer state."""
  configuration.validate(config)
  mesh = sharding.build_mesh(config.mesh) if mesh is None else mesh

  def create():
    model = models.build(config.model, config.data, nnx.Rngs(params=config.seed))
    # Only layer decay reads the depth, of ViT sizes; models with other sizes (tps) refuse it.
    depth = vit.size(config.model)[1] if config.optim.layer_decay < 1 else 0
    tx = optim.build(config.optim, config.total_steps, depth=depth)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
  shardings = sharding.state_shardings(abstract_state, mesh, config.mesh)
  sharding.check_divisible(abstract_state[0], shardings[0])  # the optimizer state mirrors it
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  return Setup(config, mesh, graphdef, abstract_state, shardings,
               sharding.batch_sharding(mesh, config.mesh), create)


def init_state(setup: Setup) -> nnx.State:
  """Creates parameters and optimizer state directly in their shardings."""
  return jax.jit(lambda: nnx.state(setup.create()), out_shardings=setup.state_shardings)()


def make_train_step(setup: Setup):
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
    model, optimizer = nnx.merge(setup.graphdef, state)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The step's randomness depends only on the root key and the step: resumes are exact.
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), optimizer.step[...])
    grad_fn = jax.grad(loss_and_metrics, argnums=1, has_aux=True)
    if k == 1:
      grads, (metrics, batch_stats) = grad_fn(graphdef, params, rest, batch["video"],
                                              batch["label"], key)
    else:
      # Micro-batch i takes every k-th clip from i on, so each device keeps its own clips.
      micro = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
              x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), micro_sharding),
          {"video": batch["video"], "label": batch["label"]})

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
    return nnx.state((model, optimizer)), metrics

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


def compile_train_step(setup: Setup):
  """The train step compiled ahead of the first batch; logs the memory figures per device."""
  config, d = setup.config, setup.config.data
  logging.info("Memory per device, estimated before compiling: %s.",
               memory.describe(memory.estimate(setup)))
  batch = {
      "video": jax.ShapeDtypeStruct((config.batch_size, d.num_frames, d.crop_size, d.crop_size,
                                     3), jnp.float32, sharding=setup.batch_sharding),
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


def _describe(metrics: dict[str, float]) -> str:
  """The headline numbers of a metrics dict, as a log line fragment."""
  names = {"top1": "top-1", "top5": "top-5", "loss": "loss", "recon_mse": "reconstruction MSE"}
  parts = [f"{label} {metrics[k]:.4f}" for k, label in names.items() if k in metrics]
  # Multi-view evaluation: top1_<clips>x<crops>, e.g. top1_5x3.
  parts += [f"top-1 over {k.removeprefix('top1_')} views {v:.4f}" for k, v in metrics.items()
            if k.startswith("top1_")]
  for k in ("num_skipped", "skipped_records"):
    if metrics.get(k):
      parts.append(f"{metrics[k]:.0f} corrupt records skipped")
  return ", ".join(parts)


def _eval_batches(setup: Setup, data_dir: str):
  config = setup.config
  batch_size = (config.eval_batch_size or config.batch_size) // jax.process_count()
  return data.build(config.data, config.data.eval_split, batch_size=batch_size, seed=config.seed,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    data_dir=data_dir)


def _prepare_data(config: ml_collections.ConfigDict, workdir: str) -> str:
  """data.prepare on process 0 first: processes must not generate one dataset side by side."""
  if jax.process_index() == 0:
    data_dir = data.prepare(config.data, workdir)
  sharding.check_processes_agree("data preparation barrier", "")
  return data_dir if jax.process_index() == 0 else data.prepare(config.data, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns eval metrics."""
  setup = build(config)
  # Before anything collective (orbax, the step), so a mismatch is an error, not a hang.
  sharding.check_processes_agree("config", config.to_json())
  os.makedirs(workdir, exist_ok=True)
  data_dir = _prepare_data(config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)

  with jax.set_mesh(setup.mesh):
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(setup.abstract_state)
      step, rng = meta["step"], np.asarray(meta["rng"], np.uint32)
      data_position = meta["data_position"]
      logging.info("Resuming at step %d of %d.", step, config.total_steps)
    else:
      state = init_state(setup)
      if config.init_from:
        state = checkpoint.init_from(state, config.init_from,
                                     masking.token_grid(config.model, config.data),
                                     config.init_from_inflation)
      step, data_position = 0, 0
      rng = np.asarray(jax.random.key_data(jax.random.key(config.seed)), np.uint32)
      param_count = layers.count_params(setup.abstract_state[0])  # [0]: the model
      logging.info("Training %s (%s parameters) on %d devices, mesh %s, from %s.",
                   config.model.name, f"{param_count:,}", jax.device_count(),
                   dict(setup.mesh.shape), config.init_from or "scratch")

    sharding.check_processes_agree("step to start from", str(step))
    train_step = compile_train_step(setup)
    rng_array = jax.make_array_from_process_local_data(sharding.replicated(setup.mesh), rng)
    eval_step = evaluate.make_eval_step(setup)
    lr_schedule = optim.schedule(config.optim, config.total_steps)

    def save(step):
      ckpt.save(step, state, {"step": step, "data_position": data_position,
                              "rng": rng.tolist()})

    def run_eval(step):
      metrics = evaluate.evaluate(eval_step, state, _eval_batches(setup, data_dir),
                                  setup.batch_sharding)
      writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
      writer.flush()
      logging.info("eval at step %d over %d clips: %s", step, metrics["num_examples"],
                   _describe(metrics))
      return metrics

    train_data = data.build(config.data, config.data.train_split,
                            batch_size=config.batch_size // jax.process_count(),
                            seed=config.seed, start_batch=data_position,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), data_dir=data_dir)
    train_batches = _device_prefetch(train_data, setup.batch_sharding)

    preemption = _Preemption()
    pending, last_log = [], (step, time.time())
    previous_stop = None  # read one step late, so the host does not wait for every step
    try:
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
          # Records that failed to decode since this process started (this host's).
          means["train/skipped_records"] = train_data.skipped
          writer.write_scalars(step, {**means, "train/lr": float(lr_schedule(step - 1)),
                                      "train/steps_per_s": steps_per_s})
          logging.info("step %d/%d: %s, %.2f steps/s, ETA %s", step, config.total_steps,
                       _describe({k.removeprefix("train/"): v for k, v in means.items()}),
                       steps_per_s, _format_duration(eta))
          pending, last_log = [], (step, now)
        if stop is not None and bool(stop):
          save(step)
          ckpt.wait()
          logging.warning("Saved step %d after SIGTERM (to this or another process); rerun the same "
                          "command to resume.", step)
          return {}
        if step % config.checkpoint_every_steps == 0 and step < config.total_steps:
          save(step)
        if config.eval_every_steps and step % config.eval_every_steps == 0 \
            and step < config.total_steps:
          run_eval(step)
      if ckpt.latest_step() != step:
        save(step)
      metrics = run_eval(step)
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
          json.dump({"step": step, **metrics}, f, indent=2)
      return metrics
    finally:
      preemption.restore()
      ckpt.wait()
      ckpt.close()
      writer.close()


def restore_model(config: ml_collections.ConfigDict, workdir: str,
                  step: int | None = None) -> tuple[nnx.Module, int]:
  """The model of `workdir`'s latest checkpoint (or `step`), without its optimizer state, on
  this process's devices (for prediction and export); and the step it was saved at."""
  setup = build(config)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    ckpt.close()
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first with --mode=train")
  with jax.set_mesh(setup.mesh):
    state, meta = ckpt.restore(setup.abstract_state, step)
  ckpt.close()
  model, _ = nnx.merge(setup.graphdef, state)
  return model, meta["step"]


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the latest checkpoint in `workdir`."""
  setup = build(config)
  sharding.check_processes_agree("config", config.to_json())
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # before anything is written there
    raise FileNotFoundError(f"no checkpoint in {workdir}; train first with --mode=train")
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first with --mode=train")
  data_dir = _prepare_data(config, workdir)
  with jax.set_mesh(setup.mesh):
    state, meta = ckpt.restore(setup.abstract_state)
    eval_step = evaluate.make_eval_step(setup)
    metrics = evaluate.evaluate(eval_step, state, _eval_batches(setup, data_dir),
                                setup.batch_sharding)
  ckpt.close()
  logging.info("eval of step %d over %d clips: %s", meta["step"], metrics["num_examples"],
               _describe(metrics))
  return {"step": meta["step"], **metrics}
