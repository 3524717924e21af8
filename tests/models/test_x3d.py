"""X3D (vidtx.models.x3d): pytorchvideo's parameter and multiply-add counts at full size, the SE
widths and where SE sits, blocks that start as their shortcut, and config errors. Logits
against pytorchvideo are in tests/parity/test_x3d_parity.py; training in the family contract
(tests/models/test_families.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors, models
from vidtx.models import layers, x3d
from vidtx.tools import flops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(size="xs", frames=4, crop=160, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "x3d", size
  c.data.num_frames, c.data.crop_size, c.data.min_resize = frames, crop, crop
  c.data.num_classes = 400
  c.update_from_flattened_dict(fields)
  return c


# pytorchvideo's num_params and GMACs per view at each size's training clip (conv_and_mvit.md;
# FlopCounterMode / 2 on its hub's x3d_xs ... x3d_l: 0.6053, 1.9629, 4.7325, 18.3677).
PYTORCHVIDEO = {
    "xs": (4, 160, 3_794_274, 0.61),
    "s": (13, 160, 3_794_274, 1.96),
    "m": (16, 224, 3_794_274, 4.73),
    "l": (16, 312, 6_153_384, 18.37),
}


@pytest.mark.parametrize("size", sorted(PYTORCHVIDEO))
def test_full_size_counts_match_pytorchvideo(size):
  """The convolutions' and matrix products' MACs (what FlopCounterMode counts), the depth-wise
  convolutions included."""
  frames, crop, params, gmacs = PYTORCHVIDEO[size]
  counted = flops.count(config(size, frames, crop))
  print(f"X3D-{size.upper()} {frames}x{crop}: {counted['params']:,} parameters, "
        f"{counted['gmacs']:.4f} GMACs")
  assert counted["params"] == params
  assert counted["gmacs"] == pytest.approx(gmacs, rel=0.03)


def test_sizes_are_x3ds_depths():
  assert x3d.SIZES == {"xs": (3, 5, 11, 7), "s": (3, 5, 11, 7), "m": (3, 5, 11, 7),
                       "l": (5, 10, 25, 15)}


@pytest.mark.parametrize("width, se", [(54, 8), (108, 8), (216, 16), (432, 32), (24, 8)])
def test_se_width_rounds_a_sixteenth_to_eights(width, se):
  """432 / 16 = 27 rounds to 24, more than 10% under, so up to 32 (pytorchvideo's round_width)."""
  assert x3d.round_width(width * x3d.SE_RATIO) == se


def tiny(**fields):
  c = config(frames=4, crop=32, **{"data.num_classes": 3, "model.x3d.stage_widths": (8, 16),
                                   "model.x3d.stage_blocks": (3, 2), "model.x3d.head_width": 32,
                                   **fields})
  configuration.validate(c, num_devices=1, num_processes=1)
  return models.build(c.model, c.data, nnx.Rngs(0))


def test_se_on_every_other_block_and_shortcut_norm_only_where_the_width_changes():
  model = tiny()
  stage0, stage1 = model.stages
  assert [b.se is not None for b in stage0] == [True, False, True]
  assert [b.se is not None for b in stage1] == [True, False]
  assert stage0[0].se.reduce.kernel.shape == (1, 1, 1, 18, 8)  # int(2.25 x 8) = 18 channels
  # Stage 0's first block strides 2 at 8 -> 8 channels: a shortcut conv, no BatchNorm after it.
  assert stage0[0].shortcut is not None and stage0[0].shortcut_norm is None
  assert stage1[0].shortcut is not None and stage1[0].shortcut_norm is not None
  assert stage0[1].shortcut is None and stage0[1].shortcut_norm is None


@pytest.mark.parametrize("zero_init", [True, False])
def test_blocks_start_as_their_shortcut_with_zero_init_residual(zero_init):
  """PySlowFast's ZERO_INIT_FINAL_BN: each block's last BatchNorm scale starts at 0, so a new
  block gives relu(shortcut(x)) (its input, through the ReLU, where the shape stays)."""
  model = tiny(**{"model.x3d.zero_init_residual": zero_init})
  block = model.stages[0][1]
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 8))
  y = block(x, train=False)
  if zero_init:
    np.testing.assert_array_equal(np.asarray(block.norm_c.scale[...]), 0.0)
    np.testing.assert_allclose(y, jax.nn.relu(x), atol=1e-6)
  else:
    assert np.abs(np.asarray(y - jax.nn.relu(x))).max() > 1e-2


def test_depthwise_convolutions_give_the_shifted_sums_logits():
  """Accelerators run the depth-wise convs as grouped convolutions, XLA:CPU as shifted sums
  (layers.depthwise_conv3d): one model, the same features either way (the stem's 5x1x1 conv
  and the blocks' 3x3x3 ones, strided included)."""
  model = tiny(**{"model.x3d.zero_init_residual": False})
  video = jax.random.normal(jax.random.key(2), (2, 4, 32, 32, 3))

  def features():
    x = model.stem(video, False)
    for stage in model.stages:
      for block in stage:
        x = block(x, False)
    return np.asarray(x)

  shifted = features()
  with layers.convolutions():
    convolved = features()
  scale = np.abs(shifted).max()
  assert shifted.shape == (2, 4, 4, 4, 16) and scale > 0.1
  np.testing.assert_allclose(shifted, convolved, rtol=1e-5, atol=1e-5 * scale)


def test_head_averages_the_whole_map_at_any_size():
  """The same clip content tiled to a larger frame gives the same logits: the head's average
  covers the whole map, not a window fixed for one crop size."""
  model = tiny(**{"model.x3d.zero_init_residual": False})
  feature = jax.random.normal(jax.random.key(1), (1, 2, 1, 1, 16))
  small = model.head(jnp.tile(feature, (1, 1, 2, 2, 1)), train=False)
  large = model.head(jnp.tile(feature, (1, 1, 6, 6, 1)), train=False)
  np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"model.x3d.stage_widths": (8, 16, 32, 64, 128)},
     r"model.x3d.stage_widths=\(8, 16, 32, 64, 128\): give positive ints, one per stage "
     r"\(at most 4\)"),
    ({"model.x3d.stage_widths": (8, 16)},
     r"model.x3d.stage_widths=\(8, 16\): needs one entry per stage: the widths are \(8, 16\) "
     r"and the blocks per stage \(3, 5, 11, 7\)"),
    ({"model.x3d.stage_blocks": (1, 0)}, r"model.x3d.stage_blocks=\(1, 0\): give positive ints"),
    ({"model.x3d.head_width": 0}, r"model.x3d.head_width=0: give a positive int"),
    ({"model.x3d.shortcut_norm": "never"},
     r"model.x3d.shortcut_norm='never': choose one of \('width', 'always'\)"),
    ({"model.size": "xl"}, r"model.size='xl': choose one of \['xs', 's', 'm', 'l'\]"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate(config(**fields), num_devices=1, num_processes=1)


def test_recipes_follow_pyslowfast():
  """configs/x3d_k400.py against PySlowFast's configs/Kinetics/X3D_{XS,S,M,L}.yaml."""
  def load(variant):
    return configuration.load(os.path.join(ROOT, "configs", f"x3d_k400.py:{variant}"))

  for variant, clip in {"xs": (4, 12, 182, 228, 160, 182), "s": (13, 6, 182, 228, 160, 182),
                        "m": (16, 5, 256, 320, 224, 256), "l": (16, 5, 356, 446, 312, 356)
                        }.items():
    c = load(variant)
    d = c.data
    assert c.model.size == variant
    assert (d.num_frames, d.frame_stride, d.min_resize, d.max_resize, d.crop_size,
            d.eval_resize) == clip
    assert (d.eval_clips, d.eval_crops, d.flip) == (10, 3, "random")
    epochs = 256 if variant == "l" else 300
    steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
    assert (c.total_steps, c.optim.warmup_steps) == (epochs * steps_per_epoch,
                                                     35 * steps_per_epoch)
    assert c.optim.lr == pytest.approx(0.1 * c.batch_size / 128)  # L: 0.05 at 64
    assert (c.optim.name, c.optim.nesterov, c.optim.weight_decay) == ("sgd", True, 5e-5)
    assert (c.model.head_dropout, c.model.x3d.zero_init_residual) == (0.5, True)
    assert (c.model.bn.group_size, c.model.bn.precise_batches) == (c.batch_size // 8, 200)
