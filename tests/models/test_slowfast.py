"""SlowFast (vidtx.models.slowfast): the references' parameter and multiply-add counts at full
size, the Slow pathway's frames, the pathways' widths and kernels, the zero-initialised final
BatchNorms, and config errors. Logits against pytorchvideo, and the checkpoint layouts, are in
tests/parity/test_pytorchvideo_parity.py; training in the family contract
(tests/models/test_families.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors, models
from vidtx.models import slowfast
from vidtx.tools import flops


def config(size, frames=32, crop=224, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "slowfast", size
  c.data.num_frames, c.data.crop_size, c.data.min_resize, c.data.num_classes = (frames, crop,
                                                                                crop, 400)
  c.update_from_flattened_dict(fields)
  return c


def build(c):
  return nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))


# Parameters and GMACs per view of 32 frames at 224^2 as torch's FlopCounterMode / 2 counts the
# references (the convolutions and matrix products; conv_and_mvit.md): pytorchvideo's
# slowfast_r50; create_slowfast with SLOWFAST_4x16_R50's alpha 8 and fusion kernel 5 (the
# table's 27.80 is create_slowfast's default kernel 7); hub slowfast_16x8_r101_50_50's network
# (PySlowFast's R101_50_50) at 8x8.
REFERENCE = {"r50_8x8": (34_566_488, 50.31), "r50_4x16": (34_480_216, 27.64),
             "r101_8x8": (53_774_808, 81.55)}


@pytest.mark.parametrize("size", sorted(REFERENCE))
def test_full_size_counts_match_the_references(size):
  params, gmacs = REFERENCE[size]
  counted = flops.count(config(size))
  print(f"{size}: {counted['params']:,} parameters, {counted['gmacs']:.2f} GMACs")
  assert counted["params"] == params
  assert counted["gmacs"] == pytest.approx(gmacs, abs=0.005)  # well within 3%


def test_the_slow_pathway_takes_pyslowfasts_frames():
  """Spread from the first frame to the last and truncated, as PySlowFast's
  pack_pathway_output picks them: not every alpha-th frame."""
  assert slowfast.slow_frames(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
  assert slowfast.slow_frames(32, 8).tolist() == [0, 10, 20, 31]
  assert slowfast.slow_frames(16, 4).tolist() == [0, 5, 10, 15]
  assert slowfast.slow_frames(8, 8).tolist() == [0]
  # 64 frames (SSv2's 16x8): float32 rounding truncates some points one lower than exact
  # arithmetic would ((i * 63) // 15 gives 21 and 42 at i = 5 and 10).
  assert slowfast.slow_frames(64, 4).tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46,
                                                  50, 54, 58, 63]


def test_the_slow_frames_are_torchs_linspace_indices():
  torch = pytest.importorskip("torch")
  for frames in range(1, 257):
    for alpha in range(1, 17):
      if frames >= alpha:
        expected = torch.linspace(0, frames - 1, frames // alpha).long().tolist()
        assert slowfast.slow_frames(frames, alpha).tolist() == expected, (frames, alpha)


def kernel(unit):
  return unit.conv.kernel.shape


def test_the_pathways_widths_kernels_and_lateral_connections():
  model = build(config("r50_8x8"))
  slow, fast = model.slow, model.fast
  assert slow.stem.conv.kernel.shape == (1, 7, 7, 3, 64)
  assert fast.stem.conv.kernel.shape == (5, 7, 7, 3, 8)
  # Fast -> Slow: 7x1x1 convs (stride alpha in time) to twice the Fast channels.
  assert [kernel(f) for f in model.fuse] == [(7, 1, 1, c, 2 * c) for c in (8, 32, 64, 128)]
  assert [f.conv.stride for f in model.fuse] == [(4, 1, 1)] * 4
  # Each Slow stage reads its input and the fused channels: 64 + 16, 256 + 64, ...
  assert [kernel(s[0].a)[3] for s in slow.stages] == [80, 320, 640, 1280]
  assert [kernel(s[0].a)[3] for s in fast.stages] == [8, 32, 64, 128]
  assert [kernel(s[0].c)[4] for s in fast.stages] == [32, 64, 128, 256]
  assert [[kernel(b.a)[0] for b in s] for s in slow.stages] == [[1] * 3, [1] * 4, [3] * 6,
                                                                [3] * 3]
  assert [[kernel(b.a)[0] for b in s] for s in fast.stages] == [[3] * 3, [3] * 4, [3] * 6,
                                                                [3] * 3]
  # The shortcut reads the fused input too.
  assert slow.stages[1][0].shortcut.conv.kernel.shape == (1, 1, 1, 320, 512)
  assert model.head.kernel.shape == (2048 + 256, 400)


def test_the_feature_maps_of_a_small_model():
  """Slow: T / alpha frames at the full widths; Fast: T frames at an eighth; both 1/32 of the
  side. A clip of another length is refused."""
  c = config("r50_4x16", frames=16, crop=64, **{
      "model.slowfast.stage_widths": (8, 16, 32, 64), "model.slowfast.stage_blocks": (1,) * 4})
  features = lambda frames: nnx.eval_shape(lambda: models.build(
      c.model, c.data, nnx.Rngs(0)).features(jnp.zeros((2, frames, 64, 64, 3))))
  slow, fast = features(16)
  assert (slow.shape, fast.shape) == ((2, 2, 2, 2, 256), (2, 16, 2, 2, 32))
  with pytest.raises(ValueError, match="multiple of alpha=8 frames, got 12"):
    features(12)


def test_zero_init_final_norm_in_both_pathways():
  fields = {"model.slowfast.stage_widths": (8,), "model.slowfast.stage_blocks": (2,)}
  c = config("r50_8x8", **fields, **{"model.slowfast.zero_init_final_norm": True})
  model = models.build(c.model, c.data, nnx.Rngs(0))
  for pathway in (model.slow, model.fast):
    for stage in pathway.stages:
      for block in stage:
        assert not np.asarray(block.c.norm.scale[...]).any()
        assert np.asarray(block.b.norm.scale[...]).all()
  c.model.slowfast.zero_init_final_norm = False
  default = models.build(c.model, c.data, nnx.Rngs(0))
  assert np.asarray(default.fast.stages[0][0].c.norm.scale[...]).all()


@pytest.mark.parametrize("fields, message", [
    ({"data.num_frames": 30},
     r"data.num_frames=30: model.size='r50_8x8' gives the Slow pathway one frame in alpha=4: "
     r"give a multiple of 4"),
    ({"model.size": "r50_4x16", "data.num_frames": 4}, r"data.num_frames=4: .*alpha=8"),
    ({"model.slowfast.stage_widths": (12, 24, 48, 96)},
     r"model.slowfast.stage_widths=\(12, 24, 48, 96\): give multiples of 8"),
    ({"model.slowfast.stage_widths": (16, 32)},
     r"model.slowfast.stage_widths=\(16, 32\): needs one entry per stage: the widths are "
     r"\(16, 32\) and the blocks per stage \(3, 4, 6, 3\)"),
    ({"model.slowfast.stage_blocks": (1, 0)},
     r"model.slowfast.stage_blocks=\(1, 0\): give positive ints"),
    ({"model.size": "r152_8x8"}, r"model.size='r152_8x8': choose one of \['r50_4x16'"),
    ({"model.width": 32}, r"model.width=32: model.name='slowfast' does not read it"),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate(config("r50_8x8", **fields), num_devices=1, num_processes=1)


def test_its_section_is_refused_under_another_family():
  c = configuration.base()
  c.model.slowfast.stage_blocks = (1, 1)
  with pytest.raises(errors.ConfigError, match=r"model.slowfast.stage_blocks=\(1, 1\): "
                     r"model.name='vit' does not read the slowfast section"):
    configuration.validate(c, num_devices=1, num_processes=1)
  assert slowfast.FAMILY.sizes.keys() == {"r50_4x16", "r50_8x8", "r101_8x8", "r101_101_101_8x8"}
