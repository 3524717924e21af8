"""The ViT block's kernels alone on this CPU: XLA:CPU (vidtx) against PyTorch.

  python benchmarks/cpu_kernels.py --config=configs/videomae_k400.py \\
      --config.model.size=S --config.data.crop_size=112 --config.batch_size=8 [--rounds=8]

Where `train_step.py --torch` finds vidtx's step slower than PyTorch's, this says which kernels
account for it. For the config's width, heads, MLP width and tokens per batch it times, in JAX
and in CPU torch, each of a block's matmuls in the three forms a training step runs (y = x W,
the input gradient dY Wᵀ, the weight gradient Xᵀ dY), and the attention core forward and
forward + backward (vidtx's `layers.dot_product_attention`; torch's
`scaled_dot_product_attention`, its fused CPU kernel). Rounds of 5 calls alternate between the
two, so that a drift in the machine's speed reaches both alike; medians over all calls. Prints
one markdown table; the last row is a block's total (each matmul once per form, the attention
forward + backward).
"""

from vidtx import host

host.keep_freed_memory()  # as vidtx.main does, before any import starts a thread

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vidtx.models import layers, masking, vit


def median_ms(*fns, rounds: int, calls: int = 5) -> tuple[float, ...]:
  """Median ms of a call of each of `fns`, timed in alternating rounds of `calls` calls each."""
  times = [[] for _ in fns]
  for fn in fns:
    fn()
  for _ in range(rounds):
    for fn, out in zip(fns, times):
      for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
  return tuple(1000 * float(np.median(t)) for t in times)


def cases(config):
  """(name, jax function, torch function, arrays, counted in the block's total) for each
  kernel of one block. Torch inputs carry no gradient, so only the backward case builds a
  graph."""
  import torch
  if config.model.name != "vit":
    raise ValueError(f"cpu_kernels times the plain ViT block: model.name must be 'vit', not "
                     f"{config.model.name!r}")
  width, _, heads = vit.size(config.model)
  hidden = int(width * config.model.mlp_ratio)
  tokens = math.prod(masking.token_grid(config.model, config.data))
  rows = config.batch_size * tokens
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  for name, d_in, d_out in (("qkv", width, 3 * width), ("attention output", width, width),
                            ("MLP in", width, hidden), ("MLP out", hidden, width)):
    x, w, g = normal(rows, d_in), normal(d_in, d_out), normal(rows, d_out)
    yield f"{name} X W", lambda x, w: x @ w, lambda x, w: x @ w, (x, w), True
    yield f"{name} dY Wᵀ", lambda g, w: g @ w.T, lambda g, w: g @ w.t(), (g, w), True
    yield f"{name} Xᵀ dY", lambda x, g: x.T @ g, lambda x, g: x.t() @ g, (x, g), True
  qkv = [normal(config.batch_size, tokens, heads, width // heads) for _ in range(3)]

  def torch_attention(q, k, v):  # [B, N, heads, head_dim] in and out, as vidtx's
    return torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)

  def jax_backward(q, k, v):
    loss = lambda q, k, v: jnp.vdot(layers.dot_product_attention(q, k, v),
                                    jax.lax.stop_gradient(v))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  def torch_backward(q, k, v):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    torch.vdot(torch_attention(q, k, v).flatten(), v.detach().flatten()).backward()
    return q.grad, k.grad, v.grad

  # The forward is part of the forward + backward, so only the latter is counted.
  yield "attention forward", layers.dot_product_attention, torch_attention, qkv, False
  yield "attention forward + backward", jax_backward, torch_backward, qkv, True


def main(argv):
  del argv
  import torch
  config = flags.FLAGS.config
  torch.set_num_threads(os.cpu_count())
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; float32, medians of {5 * flags.FLAGS.rounds} calls")
  print("| kernel | vidtx (XLA:CPU) ms | PyTorch ms | vidtx / PyTorch |")
  print("|---|---|---|---|")
  totals = np.zeros(2)
  for name, jax_fn, torch_fn, arrays, counted in cases(config):
    jitted = jax.jit(jax_fn)
    jax_args = [jnp.asarray(a) for a in arrays]
    torch_args = [torch.from_numpy(a) for a in arrays]
    ms = median_ms(lambda: jax.block_until_ready(jitted(*jax_args)),
                   lambda: torch_fn(*torch_args), rounds=flags.FLAGS.rounds)
    if counted:
      totals += ms
    print(f"| {name} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[0] / ms[1]:.2f} |")
  print(f"| **one block** | {totals[0]:.1f} | {totals[1]:.1f} | **{totals[0] / totals[1]:.2f}** |")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_integer("rounds", 8, "Alternating rounds of 5 calls per kernel and side.")
  flags.mark_flag_as_required("config")
  app.run(main)
