"""S3D and S3D-G (vidtx.models.s3d): torchvision's parameter and multiply-add counts at full
size, where S3D-G's gates sit, the head's pooling window, and config errors. Logits against
torchvision (and a gated reference) are in tests/parity/test_torchvision_video_parity.py;
training in the family contract (tests/models/test_families.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors, models
from vidtx.models import layers, s3d
from vidtx.tools import flops


def config(size="s3d", frames=16, crop=224, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "s3d", size
  c.data.num_frames, c.data.crop_size, c.data.min_resize = frames, crop, crop
  c.data.num_classes = 400
  c.update_from_flattened_dict(fields)
  return c


def abstract(c):
  return nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))


@pytest.mark.parametrize("frames, gmacs", [(16, 17.98), (64, 71.92)])
def test_full_size_counts_match_torchvision(frames, gmacs):
  """torchvision's num_params 8,320,048 and GMACs per view (conv_and_mvit.md: its meta's 17.98
  at 16x224, 71.92 at the paper's 64 frames)."""
  counted = flops.count(config(frames=frames))
  print(f"S3D {frames}x224: {counted['params']:,} parameters, {counted['gmacs']:.2f} GMACs")
  assert counted["params"] == 8_320_048
  assert counted["gmacs"] == pytest.approx(gmacs, rel=0.03)


def test_gating_adds_a_linear_per_branch_and_one_after_conv2c():
  """S3D-G: a C x C Linear with bias on each branch of the 9 mixed blocks (C the branch's
  output), and one on conv2c's 192 channels; nothing else changes."""
  plain = layers.count_params(nnx.state(abstract(config()), nnx.Param))
  gated = layers.count_params(nnx.state(abstract(config(**{"model.s3d.gating": True})),
                                        nnx.Param))
  stem, stages = s3d.SIZES["s3d"]
  gated_channels = [stem[2]] + [c for stage in stages for b in stage
                                for c in (b[0], b[2], b[4], b[5])]
  assert len(gated_channels) == 1 + 9 * 4
  assert gated - plain == sum(c * c + c for c in gated_channels) == 1_225_008


@pytest.mark.parametrize("frames, crop, window", [(64, 224, (2, 7, 7)), (16, 64, (2, 2, 2)),
                                                  (8, 32, (1, 1, 1))])
def test_head_pools_2x7x7_windows_or_the_whole_smaller_map(frames, crop, window):
  """Over 64 frames of 224 the 8x7x7 map gives 7 windows of 2x7x7 whose logits are averaged
  (torchvision's AvgPool3d((2, 7, 7), stride=1), classifier, mean): the first and last time
  steps weigh half as much as the others. Smaller maps are averaged whole."""
  grid = s3d.feature_grid(frames, crop)
  assert tuple(min(p, n) for p, n in zip(s3d.POOL, grid)) == window
  c = config("tiny", frames, crop, **{"data.num_classes": 3})
  model = models.build(c.model, c.data, nnx.Rngs(0))
  kernel = np.asarray(model.classifier.kernel[...]).reshape(-1, 3)
  features = np.random.default_rng(0).standard_normal((2, *grid, kernel.shape[0]))
  weights = np.ones(grid[0])
  if window[0] < grid[0]:  # windows of 2 steps, stride 1: the inner steps are in two
    weights[1:-1] = 2
  pooled = np.einsum("bthwc,t->bc", features, weights / weights.sum()) / (grid[1] * grid[2])
  np.testing.assert_allclose(model.head(jnp.asarray(features, jnp.float32)),
                             pooled @ kernel + np.asarray(model.classifier.bias[...]),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fields, message", [
    ({"data.num_frames": 4}, r"data.num_frames=4: S3D strides 8 in time: give at least 5"),
    ({"data.crop_size": 16, "data.min_resize": 16},
     r"data.crop_size=16: S3D strides 32 in space: give at least 17"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate(config("tiny", 8, 32, **fields), num_devices=1, num_processes=1)


def test_smallest_clips_run():
  """5 frames of 17x17, the least the strides allow, give logits."""
  c = config("tiny", 5, 17, **{"data.num_classes": 3})
  configuration.validate(c, num_devices=1, num_processes=1)
  model = models.build(c.model, c.data, nnx.Rngs(0))
  logits, _ = model(jnp.zeros((1, 5, 17, 17, 3)))
  assert logits.shape == (1, 3)
