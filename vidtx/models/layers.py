"""Shared transformer pieces; every video model composes these.

Conventions: video is [B, T, H, W, C]; tokens are [B, N, D] in (t, h, w) order. Every
parameter carries logical axis names (see `vidtx.sharding`) so that data, FSDP and tensor
parallelism are a config change. Parameters are float32; computation runs in `dtype`;
normalization and softmax run in float32.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = jnp.dtype


def param(rngs, init, shape, axes):
  """A float32 parameter with logical axis names `axes` (one per dimension).

  The names are metadata only; `vidtx.sharding` turns them into shardings, so models can be
  built with or without a mesh.
  """
  assert len(axes) == len(shape), (shape, axes)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes,
                   eager_sharding=False)


xavier = nnx.initializers.xavier_uniform()
trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32, returned in the input dtype."""

  def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param(rngs, ones, (dim,), ("norm",))
    self.bias = param(rngs, zeros, (dim,), ("norm",))

  def __call__(self, x):
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias with logical axes (in_axis, out_axis)."""

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, use_bias: bool = True,
               dtype: Dtype = jnp.float32, kernel_init=xavier, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init, (d_in, d_out), axes)
    self.bias = param(rngs, zeros, (d_out,), axes[1:]) if use_bias else None

  def __call__(self, x):
    y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def drop_path(x, rate: float, key):
  """Stochastic depth: zero a sample's residual branch with probability `rate`."""
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention over the token axis.

  The qkv kernel is [D, 3, heads, head_dim] so tensor parallelism splits whole heads. With
  `qkv_bias`, q and v get learned biases and k none, as in VideoMAE (a k bias cancels in the
  softmax anyway).
  """

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
    self.num_heads, self.head_dim, self.dtype = num_heads, dim // num_heads, dtype
    shape = (dim, 3, num_heads, self.head_dim)
    # Xavier over the fused [D, 3D] matrix, as the references initialise it.
    qkv_init = lambda key, shape, dtype: xavier(key, (dim, 3 * dim), dtype).reshape(shape)
    self.qkv = param(rngs, qkv_init, shape, ("embed", None, "heads", "head_dim"))
    if qkv_bias:  # 1-D like every bias, so weight decay skips them by rank
      self.q_bias = param(rngs, zeros, (dim,), ("heads",))
      self.v_bias = param(rngs, zeros, (dim,), ("heads",))
    else:
      self.q_bias = self.v_bias = None
    proj_init = lambda key, shape, dtype: xavier(key, (dim, dim), dtype).reshape(shape)
    self.proj = param(rngs, proj_init, (num_heads, self.head_dim, dim),
                      ("heads", "head_dim", "embed"))
    self.proj_bias = param(rngs, zeros, (dim,), ("embed",))

  def __call__(self, x):
    qkv = jnp.einsum("bnd,dkhe->kbnhe", x.astype(self.dtype), self.qkv[...].astype(self.dtype))
    q, k, v = qkv[0], qkv[1], qkv[2]
    if self.q_bias is not None:
      q = q + self.q_bias[...].astype(self.dtype).reshape(self.num_heads, self.head_dim)
      v = v + self.v_bias[...].astype(self.dtype).reshape(self.num_heads, self.head_dim)
    out = jax.nn.dot_product_attention(q, k, v)
    out = jnp.einsum("bnhe,hed->bnd", out, self.proj[...].astype(self.dtype))
    return out + self.proj_bias[...].astype(self.dtype)


class Mlp(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.fc1 = Dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = Dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-LN transformer block: x + DropPath(Attn(LN x)); x + DropPath(MLP(LN x))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               drop_path: float = 0.0, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.drop_path = drop_path
    self.norm1 = LayerNorm(dim, rngs=rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.norm2 = LayerNorm(dim, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x, key=None):
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, k1)
    return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, k2)


def tubelets(video, patch):
  """[B, T, H, W, C] -> [B, N, pt*ph*pw, C]: tubelets in (t, h, w) token order, their pixels in
  (t, h, w) order. Reshapes only, so numpy arrays stay numpy."""
  b, t, h, w, c = video.shape
  pt, ph, pw = patch
  if t % pt or h % ph or w % pw:
    raise ValueError(f"video of {t}x{h}x{w} frames is not divisible by the tubelet size "
                     f"{pt}x{ph}x{pw}")
  x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw, c)


class TubeletEmbed(nnx.Module):
  """Non-overlapping (t, h, w) tubelets -> tokens: a Conv3d with kernel == stride.

  Computed as a reshape and one matmul (cheaper than a general convolution on every backend);
  the kernel keeps the Conv3d layout [kt, kh, kw, C, D] so converters map it directly.
  """

  def __init__(self, patch: tuple[int, int, int], channels: int, dim: int, *,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.patch, self.dtype = tuple(patch), dtype
    fan_in = int(np.prod(patch)) * channels
    init = lambda key, shape, dtype: xavier(key, (fan_in, dim), dtype).reshape(shape)
    self.kernel = param(rngs, init, (*self.patch, channels, dim),
                        (None, None, None, None, "embed"))
    self.bias = param(rngs, zeros, (dim,), ("embed",))

  def grid(self, video_shape) -> tuple[int, int, int]:
    """Token grid (T', H', W') for a [B, T, H, W, C] video."""
    return tuple(s // p for s, p in zip(video_shape[1:4], self.patch))

  def __call__(self, video, keep=None):
    """Tokens [B, N, D] in (t, h, w) order; with `keep` [B, K] only those tubelets are
    projected (masked ones cost nothing)."""
    x = tubelets(video.astype(self.dtype), self.patch)
    x = x.reshape(*x.shape[:2], -1)
    if keep is not None:
      x = jnp.take_along_axis(x, keep[..., None], axis=1)
    kernel = self.kernel[...].astype(self.dtype).reshape(-1, self.kernel.shape[-1])
    return x @ kernel + self.bias[...].astype(self.dtype)


def sincos_1d(num_positions: int, dim: int) -> np.ndarray:
  """The fixed 1-D sinusoid table of VideoMAE: PE[n, 2i] = sin(n / 10000^(2i/D)), PE[n, 2i+1] = cos."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  rates = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
  angles = pos / rates
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
  return table.astype(np.float32)


class LearnedPosEmbed(nnx.Module):
  def __init__(self, num_positions: int, dim: int, *, rngs: nnx.Rngs):
    self.embedding = param(rngs, trunc_normal, (num_positions, dim), (None, "embed"))

  def table(self):
    """[positions, D]; models add the rows of the tokens they keep."""
    return self.embedding[...]


class SinCosPosEmbed(nnx.Module):
  """Fixed sinusoidal position embedding (no parameters)."""

  def __init__(self, num_positions: int, dim: int):
    self.num_positions, self.dim = num_positions, dim

  def table(self):
    return jnp.asarray(sincos_1d(self.num_positions, self.dim))


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Linearly increasing stochastic depth over the blocks, 0 for the first."""
  return [rate * i / max(depth - 1, 1) for i in range(depth)] if depth else []


def block_keys(key, depth: int):
  return list(jax.random.split(key, depth)) if key is not None else [None] * depth


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
