"""Slow and I3D ResNets (vidtx.models.resnet3d): pytorchvideo's parameter and multiply-add
counts at full size, each size's temporal kernels, the zero-initialised final BatchNorms, and
config errors. Logits against pytorchvideo, and the inflation of a torchvision ResNet-50, are in
tests/parity/test_pytorchvideo_parity.py; training in the family contract
(tests/models/test_families.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors, models
from vidtx.models import layers, resnet3d
from vidtx.tools import flops


def config(size, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "resnet3d", size
  c.data.num_frames, c.data.crop_size, c.data.min_resize, c.data.num_classes = 8, 224, 256, 400
  c.update_from_flattened_dict(fields)
  return c


def build(c):
  return nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))


# pytorchvideo's hub slow_r50 / i3d_r50: num_params and GMACs per 8x224 view (conv_and_mvit.md,
# FlopCounterMode / 2).
PYTORCHVIDEO = {"slow_r50": (32_454_096, 41.74), "i3d_r50": (28_043_472, 28.41)}


@pytest.mark.parametrize("size", sorted(PYTORCHVIDEO))
def test_full_size_counts_match_pytorchvideo(size):
  params, gmacs = PYTORCHVIDEO[size]
  counted = flops.count(config(size))
  print(f"{size}: {counted['params']:,} parameters, {counted['gmacs']:.2f} GMACs")
  assert counted["params"] == params
  assert counted["gmacs"] == pytest.approx(gmacs, rel=0.03)


@pytest.mark.parametrize("size, params", [
    # pytorchvideo's create_resnet(model_depth=101) with the hub R50's other arguments.
    ("slow_r101", 60_359_120), ("i3d_r101", 51_754_192)])
def test_r101_parameters_match_pytorchvideos_depth_101(size, params):
  assert layers.count_params(nnx.state(build(config(size)), nnx.Param)) == params


def conv_a_time_kernels(model):
  return [[block.a.conv.kernel.shape[0] for block in stage] for stage in model.stages]


def test_each_size_has_its_temporal_kernels():
  slow, i3d = build(config("slow_r50")), build(config("i3d_r50"))
  assert slow.stem.conv.kernel.shape[:3] == (1, 7, 7)
  assert conv_a_time_kernels(slow) == [[1] * 3, [1] * 4, [3] * 6, [3] * 3]
  assert i3d.stem.conv.kernel.shape[:3] == (5, 7, 7)
  assert conv_a_time_kernels(i3d) == [[3] * 3, [3, 1] * 2, [3, 1] * 3, [1, 3, 1]]
  assert not slow.time_pool and i3d.time_pool
  # Blocks are 1x1x1 -> 1x3x3 -> 1x1x1, 4x wider out; shortcuts where the shape changes.
  block = i3d.stages[1][0]
  assert block.b.conv.kernel.shape == (1, 3, 3, 128, 128)
  assert block.c.conv.kernel.shape == (1, 1, 1, 128, 512)
  assert block.shortcut.conv.kernel.shape == (1, 1, 1, 256, 512)
  assert i3d.stages[1][1].shortcut is None


def test_the_feature_map_is_a_32nd_of_the_side_and_i3d_halves_the_frames():
  c = config("i3d_r50", **{"model.resnet3d.stage_widths": (8, 8, 8, 8),
                           "model.resnet3d.stage_blocks": (1, 1, 1, 1)})
  video = jax.ShapeDtypeStruct((1, 8, 64, 64, 3), np.float32)
  model = models.build(c.model, c.data, nnx.Rngs(0))
  assert jax.eval_shape(model.features, video).shape == (1, 4, 2, 2, 32)
  c.model.size = "slow_r50"
  model = models.build(c.model, c.data, nnx.Rngs(0))
  assert jax.eval_shape(model.features, video).shape == (1, 8, 2, 2, 32)


def test_zero_init_final_norm_starts_every_block_as_its_shortcut():
  fields = {"model.resnet3d.stage_widths": (8, 16), "model.resnet3d.stage_blocks": (2, 1)}
  c = config("slow_r50", **fields, **{"model.resnet3d.zero_init_final_norm": True})
  model = models.build(c.model, c.data, nnx.Rngs(0))
  for stage in model.stages:
    for block in stage:
      assert not np.asarray(block.c.norm.scale[...]).any()
      assert np.asarray(block.b.norm.scale[...]).all()
  # The second block of the first stage adds nothing to its input: relu(0 + x) = x for x >= 0.
  x = jax.nn.relu(jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 32)))
  np.testing.assert_array_equal(model.stages[0][1](x, train=False), x)
  default = models.build(config("slow_r50", **fields).model, c.data, nnx.Rngs(0))
  assert np.asarray(default.stages[0][0].c.norm.scale[...]).all()


@pytest.mark.parametrize("fields, message", [
    ({"model.resnet3d.stage_widths": (16, 32, 64, 128, 256)},
     r"model.resnet3d.stage_widths=\(16, 32, 64, 128, 256\): give positive ints, one per stage "
     r"\(at most 4\)"),
    ({"model.resnet3d.stage_blocks": (1, 0)},
     r"model.resnet3d.stage_blocks=\(1, 0\): give positive ints"),
    ({"model.resnet3d.stage_widths": (16, 32)},
     r"model.resnet3d.stage_widths=\(16, 32\): needs one entry per stage: the widths are "
     r"\(16, 32\) and the blocks per stage \(3, 4, 6, 3\)"),
    ({"model.size": "i3d_r50", "data.num_frames": 1},
     r"data.num_frames=1: model.size='i3d_r50' halves the frames"),
    ({"model.size": "slow_r152"}, r"model.size='slow_r152': choose one of \['slow_r50'"),
    ({"model.width": 32}, r"model.width=32: model.name='resnet3d' does not read it"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate(config("slow_r50", **fields), num_devices=1, num_processes=1)


def test_its_section_is_refused_under_another_family():
  c = configuration.base()
  c.model.resnet3d.stage_blocks = (1, 1)
  with pytest.raises(errors.ConfigError, match=r"model.resnet3d.stage_blocks=\(1, 1\): "
                     r"model.name='vit' does not read the resnet3d section"):
    configuration.validate(c, num_devices=1, num_processes=1)
  assert resnet3d.FAMILY.sizes.keys() == {"slow_r50", "i3d_r50", "slow_r101", "i3d_r101"}
