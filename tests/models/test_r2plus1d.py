"""The video ResNets (vidtx.models.r2plus1d): torchvision's parameter and multiply-add counts
at full size, the (2+1)D factorisation's parameter budget, the stem's stride, and config
errors. Logits against torchvision are in tests/parity/test_torchvision_video_parity.py; training in the family
contract (tests/models/test_families.py)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vidtx import configuration, errors, models
from vidtx.models import layers, r2plus1d
from vidtx.tools import flops


def config(size, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "r2plus1d", size
  c.data.num_frames, c.data.crop_size, c.data.min_resize, c.data.num_classes = 16, 112, 128, 400
  c.update_from_flattened_dict(fields)
  return c


# torchvision's num_params and GMACs per 16x112 view (conv_and_mvit.md, FlopCounterMode / 2).
TORCHVISION = {
    "r2plus1d_18": (31_505_325, 40.52),
    "r3d_18": (33_371_472, 40.70),
    "mc3_18": (11_695_440, 43.34),
}


@pytest.mark.parametrize("size", sorted(TORCHVISION))
def test_full_size_counts_match_torchvision(size):
  params, gmacs = TORCHVISION[size]
  counted = flops.count(config(size))
  print(f"{size}: {counted['params']:,} parameters, {counted['gmacs']:.2f} GMACs")
  assert counted["params"] == params
  assert counted["gmacs"] == pytest.approx(gmacs, rel=0.03)


def test_r2plus1d_34_adds_resnet_34s_blocks():
  """R(2+1)D-34 is R(2+1)D-18 with 1, 2, 4 and 1 more blocks per stage, each the stage's
  non-first block (two (2+1)D convs of the stage's width, their BatchNorms)."""
  def count(size):
    c = config(size)
    model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
    return layers.count_params(nnx.state(model, nnx.Param))

  extra = 0
  for width, more in zip(r2plus1d.WIDTHS, (1, 2, 4, 1)):
    mid = r2plus1d.mid_channels(width, width)
    split = 9 * width * mid + 2 * mid + 3 * mid * width  # spatial, its BatchNorm, temporal
    extra += more * 2 * (split + 2 * width)
  assert count("r2plus1d_34") == count("r2plus1d_18") + extra


@pytest.mark.parametrize("size", ["r2plus1d_18", "r3d_18"])
def test_stem_stride_shrinks_the_first_stages_map_and_keeps_the_parameters(size):
  """model.r2plus1d.stem_stride=4 (the :cpu variant's): a 32^2 clip reaches the first stage as
  8x8 maps, every frame kept; the weights are the stride-2 model's."""
  def build(stride):
    c = config(size, **{"model.r2plus1d.stage_widths": (8, 16),
                        "model.r2plus1d.stage_blocks": (1, 1),
                        "model.r2plus1d.stem_stride": stride})
    return models.build(c.model, c.data, nnx.Rngs(0))

  coarse, fine = build(4), build(2)
  video = jnp.ones((1, 4, 32, 32, 3))
  assert coarse.stem(video, False).shape == (1, 4, 8, 8, 8)
  assert fine.stem(video, False).shape == (1, 4, 16, 16, 8)
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
  assert shapes(coarse) == shapes(fine)


@pytest.mark.parametrize("c_in, c_out, mid", [(64, 64, 144), (64, 128, 230), (128, 128, 288),
                                              (256, 512, 921), (512, 512, 1152)])
def test_mid_channels_keep_the_3d_convs_parameters(c_in, c_out, mid):
  assert r2plus1d.mid_channels(c_in, c_out) == mid
  # 1x3x3 then 3x1x1 through M channels: the 3x3x3 conv's 27 c_in c_out, less M's rounding.
  assert 0 <= 27 * c_in * c_out - (9 * c_in * mid + 3 * mid * c_out) < 9 * c_in + 3 * c_out


@pytest.mark.parametrize("fields, message", [
    ({"model.r2plus1d.stage_widths": (16, 32, 64, 128, 256)},
     r"model.r2plus1d.stage_widths=\(16, 32, 64, 128, 256\): give positive ints, one per stage "
     r"\(at most 4\)"),
    ({"model.r2plus1d.stage_widths": (16, 32)},
     r"model.r2plus1d.stage_widths=\(16, 32\): needs one entry per stage: the widths are "
     r"\(16, 32\) and the blocks per stage \(2, 2, 2, 2\)"),
    ({"model.size": "r2plus1d_50"}, r"model.size='r2plus1d_50': choose one of \['r2plus1d_18'"),
    ({"model.r2plus1d.stem_stride": 0}, r"model.r2plus1d.stem_stride=0: give a positive int"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate(config("r2plus1d_18", **fields), num_devices=1, num_processes=1)
