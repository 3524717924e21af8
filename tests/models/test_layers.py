"""Shared layers: the residual gradient's buffer; Conv3d and BatchNorm against direct
computations of PyTorch's definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def conv3d_by_hand(x, kernel, stride, padding, groups):
  """PyTorch's Conv3d written out: zero padding, then a sum over the kernel's offsets, each
  output channel reading its group's input channels."""
  x = np.pad(x, [(0, 0), *[(p, p) for p in padding], (0, 0)])
  kt, kh, kw, c_group, c_out = kernel.shape
  out_shape = [(x.shape[1 + i] - k) // s + 1 for i, (k, s) in enumerate(zip(kernel.shape, stride))]
  out = np.zeros((x.shape[0], *out_shape, c_out))
  per_group = c_out // groups
  for o in range(c_out):
    inputs = x[..., o // per_group * c_group:(o // per_group + 1) * c_group]
    for dt, dh, dw in np.ndindex(kt, kh, kw):
      window = inputs[:, dt:dt + stride[0] * out_shape[0]:stride[0],
                      dh:dh + stride[1] * out_shape[1]:stride[1],
                      dw:dw + stride[2] * out_shape[2]:stride[2]]
      out[..., o] += window @ kernel[dt, dh, dw, :, o]
  return out


def test_conv3d_pads_strides_and_groups_as_pytorch():
  conv = layers.Conv3d(4, 6, (3, 3, 2), stride=(2, 1, 2), padding=(1, 0, 1), groups=2,
                       use_bias=True, rngs=nnx.Rngs(0))
  # [kT, kH, kW, C_in / groups, C_out], channels sharded by their logical axes.
  assert conv.kernel.shape == (3, 3, 2, 2, 6)
  assert conv.kernel.get_metadata()["out_sharding"] == (None, None, None, "conv_in", "conv_out")
  conv.bias[...] = jnp.arange(6.0)
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 6, 4)).astype(np.float32)
  y = conv(jnp.asarray(x))
  # T' = (5 + 2 - 3) // 2 + 1, H' = (7 - 3) + 1, W' = (6 + 2 - 2) // 2 + 1.
  assert y.shape == (2, 3, 5, 4, 6)
  expected = conv3d_by_hand(x, np.asarray(conv.kernel[...]), (2, 1, 2), (1, 0, 1), 2)
  np.testing.assert_allclose(y, expected + np.arange(6.0), rtol=1e-5, atol=1e-5)
  # bfloat16 compute, float32 parameters.
  low = layers.Conv3d(4, 6, 3, padding=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert low(jnp.asarray(x)).dtype == jnp.bfloat16 and low.kernel.dtype == jnp.float32
  assert low.bias is None


@pytest.mark.parametrize("kernel, stride, padding, c_in, formulation", [
    ((1, 7, 7), (1, 2, 2), (0, 3, 3), 3, "matmul"),  # a ResNet stem
    ((3, 1, 1), (2, 1, 1), (1, 0, 0), 16, "matmul"),  # a (2+1)D temporal conv that strides
    ((1, 1, 1), (2, 2, 2), (0, 0, 0), 16, "matmul"),  # a strided shortcut
    ((2, 3, 2), (2, 3, 1), (0, 1, 1), 5, "matmul"),  # strides that leave inputs unread at the end
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), 16, "frames"),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), 16, "frames"),  # a (2+1)D spatial conv that strides
    ((2, 3, 2), (1, 3, 1), (1, 0, 1), 16, "frames"),  # unread inputs, uneven temporal taps
])
def test_conv3d_on_cpu_is_the_convolution_forward_and_backward(kernel, stride, padding, c_in,
                                                                 formulation):
  """XLA:CPU runs Conv3d as one matrix product over the kernel's taps (conv3d_as_matmul) or, at
  temporal stride 1 with a spatial kernel and 16 or more input channels, as 2-D convolutions of
  the frames (conv3d_by_frames): the same outputs, and the same gradients of the input and the
  kernel, as the 3-D convolution."""
  conv = layers.Conv3d(c_in, 7, kernel, stride=stride, padding=padding, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 9, 8, c_in))
  loss = lambda conv, x: jnp.sum(jnp.sin(conv(x)))
  y, grads = conv(x), jax.grad(loss, argnums=(0, 1))(conv, x)
  with layers.convolutions():
    conv_y, conv_grads = conv(x), jax.grad(loss, argnums=(0, 1))(conv, x)
  expected = conv3d_by_hand(np.asarray(x), np.asarray(conv.kernel[...]), stride, padding, 1)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, conv_y, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(conv_grads)):  # float32 sums' rounding
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * np.abs(b).max())
  program = str(jax.make_jaxpr(lambda x: conv(x))(x))
  assert ("name=conv3d_by_frames" in program) == (formulation == "frames")
  assert "lhs_spec=(0, 4, 1, 2, 3)" not in program  # no 3-D convolution


def test_conv3d_init_is_he_normal_over_the_fan_out():
  conv = layers.Conv3d(32, 64, 3, rngs=nnx.Rngs(0))
  std = float(np.std(np.asarray(conv.kernel[...])))
  assert std == pytest.approx(np.sqrt(2 / (64 * 27)), rel=0.05)
  with pytest.raises(ValueError, match="groups=3 must divide the channels 32 -> 64"):
    layers.Conv3d(32, 64, 3, groups=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"stride=\(1, 2\): give an int or \(t, h, w\) ints"):
    layers.Conv3d(32, 64, 3, stride=(1, 2), rngs=nnx.Rngs(0))


def test_batch_norm_normalises_with_the_batch_in_training_and_moves_the_running_averages():
  norm = layers.BatchNorm(3, rngs=nnx.Rngs(0))
  norm.scale[...], norm.bias[...] = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.0, -1.0, 3.0])
  assert norm.mean.get_metadata()["out_sharding"] == ("norm",)
  assert isinstance(norm.mean, nnx.BatchStat) and isinstance(norm.var, nnx.BatchStat)
  rng = np.random.default_rng(0)
  # Channels of different means and spreads; 2 x 4 x 5 x 5 = 200 values per channel.
  x = rng.normal(size=(2, 4, 5, 5, 3)) * [1.0, 3.0, 0.2] + [0.0, 5.0, -2.0]
  batch_mean, batch_var = x.mean(axis=(0, 1, 2, 3)), x.var(axis=(0, 1, 2, 3))
  y = norm(jnp.asarray(x, jnp.float32), train=True)
  expected = (x - batch_mean) / np.sqrt(batch_var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, -1.0, 3.0]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  # PyTorch's update: momentum 0.1 on the new value, the unbiased variance (n / (n - 1)).
  mean, var = 0.1 * batch_mean, 0.9 + 0.1 * batch_var * 200 / 199
  np.testing.assert_allclose(norm.mean[...], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], var, rtol=1e-5)
  # Another batch moves them further.
  x2 = rng.normal(size=(4, 2, 3, 3, 3)) + 1.0
  norm(jnp.asarray(x2, jnp.float32), train=True)
  mean = 0.9 * mean + 0.1 * x2.mean(axis=(0, 1, 2, 3))
  var = 0.9 * var + 0.1 * x2.var(axis=(0, 1, 2, 3), ddof=1)
  np.testing.assert_allclose(norm.mean[...], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], var, rtol=1e-5)
  # Evaluation: the running averages, which it leaves as they are; a clip's output does not
  # depend on the rest of its batch.
  y = norm(jnp.asarray(x, jnp.float32), train=False)
  expected = (x - mean) / np.sqrt(var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, -1.0, 3.0]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(norm(jnp.asarray(x[:1], jnp.float32), train=False), y[:1],
                             rtol=1e-6)
  np.testing.assert_allclose(norm.mean[...], mean, rtol=1e-5, atol=1e-6)
  # float32 statistics whatever the input's dtype, which the output keeps.
  low = norm(jnp.asarray(x, jnp.bfloat16), train=True)
  assert low.dtype == jnp.bfloat16 and norm.mean[...].dtype == jnp.float32
  with pytest.raises(ValueError, match="more than one value per channel"):
    norm(jnp.ones((1, 3)), train=True)


def test_window_average_pools_every_window_at_stride_1_and_clips_the_window_to_the_map():
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 4, 6)).astype(np.float32)
  got = np.asarray(layers.window_average(jnp.asarray(x), (2, 3, 3)))
  assert got.shape == (2, 2, 3, 2, 6)
  for t, h, w in np.ndindex(2, 3, 2):
    np.testing.assert_allclose(got[:, t, h, w], x[:, t:t + 2, h:h + 3, w:w + 3].mean((1, 2, 3)),
                               rtol=1e-6, atol=1e-6)
  # A window larger than the map on an axis covers that axis whole.
  got = np.asarray(layers.window_average(jnp.asarray(x), (8, 5, 3)))
  assert got.shape == (2, 1, 1, 2, 6)
  np.testing.assert_allclose(got[:, 0, 0, 1], x[:, :, :, 1:4].mean((1, 2, 3)), rtol=1e-6,
                             atol=1e-6)
  # At (or beyond) the map's size, and with no window, it is exactly the global average.
  expected = np.asarray(jnp.asarray(x).mean(axis=(1, 2, 3), keepdims=True))
  for window in ((3, 5, 4), (4, 7, 7), None):
    np.testing.assert_array_equal(np.asarray(layers.window_average(jnp.asarray(x), window)),
                                  expected)


def test_head_window_is_the_final_map_of_the_training_clip():
  # Each stride-2 step rounds up: 160 -> 5, 182 -> 6, 224 -> 7, 312 -> 10 at stride 32.
  assert [layers.head_window(4, c, 32) for c in (160, 182, 224, 312)] == [
      (4, 5, 5), (4, 6, 6), (4, 7, 7), (4, 10, 10)]
  assert layers.head_window(8, 64, 16) == (8, 4, 4)
