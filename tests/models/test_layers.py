"""Shared layers: the residual gradient's buffer."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidtx.models import layers


def _blocks(depth):
  return nnx.List([layers.Block(16, 2, rngs=nnx.Rngs(i)) for i in range(depth)])


def _loss(blocks, x, buffered):
  for block in blocks:
    x = block._forward(x, None)
    x = layers.gradient_buffer(x) if buffered else x
  return jnp.sum(x ** 2)


def test_gradient_buffer_is_the_identity_and_puts_one_conditional_per_block_on_cpu():
  blocks, x = _blocks(3), jax.random.normal(jax.random.key(0), (2, 8, 16))
  grads = {b: jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=2)(blocks, x, b)
           for b in (False, True)}
  for plain, buffered in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
    np.testing.assert_allclose(buffered, plain, rtol=1e-5, atol=1e-5)
  hlo = jax.jit(jax.grad(_loss, argnums=1), static_argnums=2).lower(
      blocks, x, True).compile().as_text()
  assert hlo.count(" conditional(") == 3  # one per block: each residual gradient is computed once


def test_a_nan_gradient_stays_nan():
  g = jax.grad(lambda x: jnp.sum(layers.gradient_buffer(x) * jnp.array([jnp.nan, 1.0])))(
      jnp.ones(2))
  assert np.all(np.isnan(g))
