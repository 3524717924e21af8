"""Video CNN convolutions alone on this CPU, forward + backward: vidtx's Conv3d as XLA:CPU runs
it (2-D convolutions of the frames, `layers.conv3d_by_frames`, or one matrix product over the
kernel's taps, `layers.conv3d_as_matmul`), the same layer as XLA's 3-D convolution
(`layers.convolutions()`), and PyTorch's Conv3d.

  taskset -c 0 python benchmarks/conv_layers.py [--batch=1] [--rounds=3]

The layers are those of R(2+1)D-18 at 16x112 and X3D-S at 13x160 (`LAYERS`), one of each kind,
with the time axis halved to 8 frames so that a round stays short; the gradients of both the
input and the kernel are computed, as inside a network. Rounds of 5 calls alternate between the
three, medians over all calls. Prints one markdown table.
"""

from vidtx import host

host.keep_freed_memory()  # as vidtx.main does, before any import starts a thread

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from cpu_kernels import median_ms  # benchmarks/cpu_kernels.py
from vidtx.models import layers

# (name, input [T, H, W, C_in], C_out, kernel, stride, padding).
LAYERS = (
    ("R(2+1)D stem, spatial 1x7x7 3->45 /2", (8, 112, 112, 3), 45, (1, 7, 7), (1, 2, 2), (0, 3, 3)),
    ("R(2+1)D spatial 1x3x3 64->144", (8, 56, 56, 64), 144, (1, 3, 3), 1, (0, 1, 1)),
    ("R(2+1)D temporal 3x1x1 144->64", (8, 56, 56, 144), 64, (3, 1, 1), 1, (1, 0, 0)),
    ("R(2+1)D spatial 1x3x3 64->230 /2", (8, 56, 56, 64), 230, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("R(2+1)D temporal 3x1x1 230->128 /2", (8, 28, 28, 230), 128, (3, 1, 1), (2, 1, 1), (1, 0, 0)),
    ("R(2+1)D shortcut 1x1x1 64->128 /2", (8, 56, 56, 64), 128, 1, 2, 0),
    ("3x3x3 64->64 (R3D, C3D)", (8, 56, 56, 64), 64, 3, 1, 1),
    ("X3D stem 1x3x3 3->24 /2", (8, 160, 160, 3), 24, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("X3D point-wise 1x1x1 24->54", (8, 40, 40, 24), 54, 1, 1, 0),
)


def main(argv):
  del argv
  sys.modules.setdefault("triton", None)  # the CUDA torch wheel's triton crashes after TF
  import torch
  torch.set_num_threads(1)
  batch, rounds = flags.FLAGS.batch, flags.FLAGS.rounds
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; batch {batch}, float32, forward + backward, "
        f"medians of {5 * rounds} calls")
  print("| layer | vidtx Conv3d ms | XLA 3-D convolution ms | PyTorch ms | vidtx / PyTorch |")
  print("|---|---|---|---|---|")
  for name, (t, h, w, c_in), c_out, kernel, stride, padding in LAYERS:
    conv = layers.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (batch, t, h, w, c_in))
    loss = lambda conv, x: jnp.sum(conv(x) ** 2)
    as_matmul = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with layers.convolutions():  # traced here, as the convolution
      as_conv = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(conv, x).compile()
    twin = torch.nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
    video = torch.from_numpy(np.array(x)).permute(0, 4, 1, 2, 3).contiguous().requires_grad_()

    def torch_step():
      twin.zero_grad(set_to_none=True)
      video.grad = None
      twin(video).square().sum().backward()

    ms = median_ms(lambda: jax.block_until_ready(as_matmul(conv, x)),
                   lambda: jax.block_until_ready(as_conv(conv, x)), torch_step, rounds=rounds)
    print(f"| {name} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[0] / ms[2]:.2f} |",
          flush=True)


if __name__ == "__main__":
  flags.DEFINE_integer("batch", 1, "Clips per call.")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds of 5 calls per layer and side.")
  app.run(main)
