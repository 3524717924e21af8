"""Shared by the model tests: a batch of synthetic-motion clips, and a few real training
steps on it."""

import jax
import numpy as np
import pytest

from vidtx import builder, configuration, sharding, train
from vidtx.data import on_device, synthetic


def synthetic_batch(config, batch_size=8):
  """{"video", "label"}: `batch_size` synthetic-motion clips of config.data's size as the input
  pipeline sends them (uint8), of classes 0, 1, 2, ... (every class of a batch of 8)."""
  d = config.data
  clips = np.stack([synthetic.generate_clip((0, i), i % 8, num_frames=d.num_frames,
                                            size=d.crop_size) for i in range(batch_size)])
  return {"video": clips.astype(np.uint8),
          "label": (np.arange(batch_size) % d.num_classes).astype(np.int32)}


def model_input(config, video):
  """The normalised float32 clips a model sees for uint8 `video` (as the eval step makes them)."""
  return np.asarray(on_device.eval_clips(config.data, video))


def train_losses(config, steps=8, batch_size=8):
  """Losses of `steps` steps of the real train step (vidtx.train.make_train_step) on one fixed
  batch of synthetic-motion clips (every class), under AdamW at a constant lr 1e-3 with
  optax.adamw's weight decay 1e-4. BatchNorm statistics move as in training."""
  config = config.copy_and_resolve_references()
  config.unlock()
  config.batch_size, config.grad_accum_steps, config.total_steps = batch_size, 1, steps
  config.optim.update(name="adamw", lr=1e-3, warmup_steps=0, min_lr=1e-3, lr_drops=(),
                      weight_decay=1e-4)
  setup = builder.build(config)
  batch = synthetic_batch(config, batch_size)
  rng = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
  losses = []
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    step = train.make_train_step(setup)
    batch = sharding.to_global(batch, setup.batch_sharding)
    for _ in range(steps):
      state, metrics = step(state, batch, rng, train.stop_flags(setup.mesh, False))
      losses.append(metrics["loss"])
  return np.asarray(jax.device_get(losses))


@pytest.fixture
def tiny_space_time():
  """A tiny config of `name` ("timesformer" or "vivit") and `attention`: 4 frames of 16x16."""
  def make(name, attention):
    c = configuration.base()
    c.model.name, c.model.attention, c.model.size = name, attention, "Ti"
    c.model.width, c.model.depth, c.model.num_heads = 32, 1, 4
    if name == "vivit":
      c.model.vivit.temporal_depth = 1
    c.model.patch_size = (1, 8, 8) if name == "timesformer" else (2, 8, 8)
    c.model.drop_path = 0.1
    c.data.num_frames, c.data.crop_size, c.data.num_classes = 4, 16, 8
    return c
  return make
