"""Kernel inflation of any 3-D convolution: a one-frame kernel over t frames, "average" (I3D's)
or "central", so that a clip of one repeated frame gives the image model's features."""

import jax
import numpy as np
import pytest

from vidtx.weights import inflate

FRAMES = 3


def conv(x, kernel):
  """A VALID convolution of x [B, (T,) H, W, C] with kernel [(kt,) kh, kw, C, D]."""
  spatial = "DHW"[-(x.ndim - 2):]
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  return np.asarray(jax.lax.conv_general_dilated(x, kernel, (1,) * (x.ndim - 2), "VALID",
                                                 dimension_numbers=numbers))


@pytest.mark.parametrize("inflation", ["average", "central"])
def test_a_one_frame_kernel_becomes_t_frames_that_see_a_repeated_frame_as_the_image(inflation):
  rng = np.random.default_rng(0)
  image_kernel = rng.standard_normal((1, 3, 3, 4, 5)).astype(np.float32)
  # Any convolution kernel, not only a patch embedding's.
  kernel = inflate.parameter("stages/0/conv1/kernel", image_kernel, (FRAMES, 3, 3, 4, 5), None,
                             inflation)
  assert kernel.shape == (FRAMES, 3, 3, 4, 5)
  if inflation == "average":
    np.testing.assert_allclose(kernel, np.repeat(image_kernel / FRAMES, FRAMES, axis=0))
  else:
    np.testing.assert_array_equal(kernel[FRAMES // 2], image_kernel[0])
    assert not kernel[:FRAMES // 2].any() and not kernel[FRAMES // 2 + 1:].any()
  frame = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  clip = np.repeat(frame[:, None], FRAMES, axis=1)
  np.testing.assert_allclose(conv(clip, kernel)[:, 0], conv(frame, image_kernel[0]),
                             rtol=1e-5, atol=1e-5)


def test_kernels_no_rule_maps_are_left_alone():
  kernel = np.zeros((2, 3, 3, 4, 5), np.float32)  # two frames are no image's
  assert inflate.parameter("conv/kernel", kernel, (4, 3, 3, 4, 5), None, "average") is None
  assert inflate.parameter("conv/kernel", kernel[:1], (4, 3, 3, 4, 6), None, "average") is None
  with pytest.raises(ValueError, match="inflation='tile'"):
    inflate.kernel(kernel[:1], 4, "tile")
