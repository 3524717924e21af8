"""The `:cpu` variants of the convolutional families learn the synthetic motion: a few real
training steps on one fixed batch of every class lower the loss (BENCHMARKS.md has their full
runs). Eight clips can be told apart without their frame order, so this catches a model or
config that does not train at all, not one blind to time (e.g. Slow with zero-initialised
final BatchNorm scales, which passes here and stalls in the full run). About 40 s on one core."""

import os

import numpy as np
import pytest

from vidtx import configuration

from conftest import train_losses  # noqa: E402  (tests/models/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIGS = ("r2plus1d_k400", "s3d_k400", "slow_k400", "i3d_k400", "x3d_k400",
               "slowfast_k400")


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_cpu_config_learns_the_synthetic_motion(name):
  c = configuration.load(f"{ROOT}/configs/{name}.py:cpu")
  losses = train_losses(c, steps=8)
  print(losses.round(3))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
