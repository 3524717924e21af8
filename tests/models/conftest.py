"""Shared by the model tests: a few optimizer steps on synthetic-motion clips."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vidtx import configuration, models
from vidtx.data import synthetic


def train_losses(config, steps=8, batch_size=8):
  """Losses of `steps` AdamW steps on one fixed batch of synthetic-motion clips (every class)."""
  d = config.data
  clips = np.stack([synthetic.generate_clip((0, i), i % 8, num_frames=d.num_frames,
                                            size=d.crop_size) for i in range(batch_size)])
  video = jnp.asarray((clips / 255.0 - np.asarray(d.mean)) / np.asarray(d.std), jnp.float32)
  labels = jnp.arange(batch_size) % d.num_classes
  configuration.validate(config, num_devices=1, num_processes=1)
  tx = optax.adamw(1e-3)

  @jax.jit  # init and steps in one program: one compile, nothing eager
  def run():
    graphdef, params, rest = nnx.split(models.build(config.model, config.data, nnx.Rngs(0)),
                                       nnx.Param, ...)

    def step(carry, key):
      params, opt_state = carry

      def loss_fn(params):
        logits, _ = nnx.merge(graphdef, params, rest)(video, train=True, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(0), steps)
    return jax.lax.scan(step, (params, tx.init(params)), keys)[1]

  return np.asarray(run())


@pytest.fixture
def tiny_space_time():
  """A tiny config of `name` ("timesformer" or "vivit") and `attention`: 4 frames of 16x16."""
  def make(name, attention):
    c = configuration.base()
    c.model.name, c.model.attention, c.model.size = name, attention, "Ti"
    c.model.width, c.model.depth, c.model.num_heads = 32, 1, 4
    c.model.vivit.temporal_depth = 1
    c.model.patch_size = (1, 8, 8) if name == "timesformer" else (2, 8, 8)
    c.model.drop_path = 0.1
    c.data.num_frames, c.data.crop_size, c.data.num_classes = 4, 16, 8
    return c
  return make
