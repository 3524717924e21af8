"""SlowFast networks ("SlowFast Networks for Video Recognition", Feichtenhofer et al., 2019) as
pytorchvideo 0.1.5 builds them (`pytorchvideo.models.slowfast.create_slowfast`; hub
`slowfast_r50`, `slowfast_16x8_r101_50_50`, `slowfast_r101`) and PySlowFast's configs
(configs/Kinetics/SLOWFAST_4x16_R50.yaml, SLOWFAST_8x8_R50.yaml, c2/SLOWFAST_8x8_R101_50_50.yaml,
c2/SLOWFAST_8x8_R101_101_101.yaml) define them.

One clip video [B, T, H, W, 3] feeds two ResNet pathways, cut inside the model:
- Fast: all T frames, at 1/8 of the widths (beta = 1/8): a 5x7x7 stem to 8 channels, then
  bottlenecks whose first conv (conv_a) is 3x1x1 in every stage;
- Slow: T / alpha frames (`slow_frames`: PySlowFast's and pytorchvideo's choice, spread evenly
  from the first frame to the last), at the ResNet-50/101 widths: a 1x7x7 stem to 64 channels,
  conv_a 1x1x1 in res2 and res3, 3x1x1 in res4 and res5 (Slow-only's kernels).
After the stem and after res2-res4, a lateral connection fuses Fast into Slow: a
fusion_kernel x 1 x 1 conv of the Fast features (stride alpha in time, so its frames are the
Slow pathway's; padding fusion_kernel // 2; twice the Fast channels), BatchNorm, ReLU, its
output concatenated behind the Slow channels, which the next stage then reads (res2 takes
64 + 16 channels). Nothing strides in time; res3-res5 stride 2 in space in their first block.
Head, as pytorchvideo's: each pathway's last map average-pooled with stride 1 over windows of
its size at the training clip (config.data: T / alpha and T frames by crop_size / 32 squared;
slowfast_r50's (8, 7, 7) and (32, 7, 7) at 32 frames of 224^2), the two concatenated (2048 +
256), dropout (model.head_dropout), Linear at each window position, the positions' logits
averaged. At the training clip (or a smaller one) that is one global average per pathway; at a
larger eval crop (data.eval_crop_size, e.g. PySlowFast's 256) it averages the windows. The
projection being linear, this model averages each pathway's windows before it: the same logits.

The stems and bottlenecks are vidtx.models.resnet3d's (`Stem`, `stage`). BatchNorm is
PyTorch's (momentum 0.1, eps 1e-5), its running averages `nnx.BatchStat`s.

Sizes (parameters at 400 classes; multiply-adds per view of 32 frames at 224^2):
- r50_4x16: alpha 8 (4 Slow frames), fusion kernel 5 (PySlowFast's SLOWFAST_4x16_R50):
  34,480,216 parameters, 27.6 GMACs;
- r50_8x8: alpha 4 (8 Slow frames), fusion kernel 7 (pytorchvideo's slowfast_r50): 34,566,488,
  50.3 GMACs;
- r101_8x8: PySlowFast's "R101_50_50": ResNet-101 depths whose res4 has temporal kernels in its
  first 6 blocks only (as the R50's 6), in both pathways; alpha 4, fusion kernel 5
  (pytorchvideo's slowfast_16x8_r101_50_50 at 64 frames, whose Kinetics weights it loads):
  53,774,808, 81.5 GMACs;
- r101_101_101_8x8: the same with temporal kernels in all 23 res4 blocks (PySlowFast's
  "R101_101_101"; pytorchvideo's slowfast_r101, whose SLOWFAST_8x8_R101.pyth it loads):
  62,826,968, 96.4 GMACs.

Parameter paths mirror the references' (vidtx.weights.pytorchvideo): "slow/stem",
"fast/stem" (blocks.0.multipathway_blocks.{0, 1}; PySlowFast s1.pathway{0, 1}_stem),
"slow/stages/<i>/<j>/{a, b, c, shortcut}" and "fast/stages/..." (blocks.<i + 1>
.multipathway_blocks.{0, 1}.res_blocks.<j>; s<i + 2>.pathway{0, 1}_res<j>), "fuse/<i>/{conv,
norm}" (blocks.<i>.multipathway_fusion; s<i + 1>_fuse), "head" (blocks.6.proj;
head.projection).
"""

import typing

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidtx import errors
from vidtx.models import layers, resnet3d
from vidtx.models.family import Family, check_stages
from vidtx.weights import pytorchvideo

BETA_INV = 8  # the Fast pathway's widths are the Slow pathway's / 8
FUSION_RATIO = 2  # a lateral conv has twice the Fast channels it reads
SLOW_STEM_TIME, FAST_STEM_TIME = 1, 5  # the stems' temporal kernels


class Size(typing.NamedTuple):
  """A size's temporal structure and depth."""
  alpha: int  # Fast frames per Slow frame; the lateral convs stride alpha in time
  fusion_kernel: int  # the lateral convs' temporal kernel
  blocks: tuple[int, ...]  # bottleneck blocks per stage
  # Per stage, the temporal kernels of its blocks' conv_a (a pattern cycled over the blocks),
  # in the Slow and in the Fast pathway.
  slow_time_kernels: tuple[tuple[int, ...], ...]
  fast_time_kernels: tuple[tuple[int, ...], ...]


R50 = dict(blocks=resnet3d.R50_BLOCKS, slow_time_kernels=((1,), (1,), (3,), (3,)),
           fast_time_kernels=((3,),) * 4)
# R101_50_50: temporal kernels in the first 6 of res4's 23 blocks, as in the R50's res4.
RES4_50 = (3,) * 6 + (1,) * 17
R101_50_50 = dict(blocks=resnet3d.R101_BLOCKS, slow_time_kernels=((1,), (1,), RES4_50, (3,)),
                  fast_time_kernels=((3,), (3,), RES4_50, (3,)))
R101_101_101 = dict(R50, blocks=resnet3d.R101_BLOCKS)
SIZES = {
    "r50_4x16": Size(alpha=8, fusion_kernel=5, **R50),
    "r50_8x8": Size(alpha=4, fusion_kernel=7, **R50),
    "r101_8x8": Size(alpha=4, fusion_kernel=5, **R101_50_50),
    "r101_101_101_8x8": Size(alpha=4, fusion_kernel=5, **R101_101_101),
}


def size(model_config: ml_collections.ConfigDict) -> tuple[Size, tuple[int, ...]]:
  """(the size, the Slow pathway's inner widths per stage): the size's blocks and
  resnet3d.WIDTHS unless the section overrides them; a model of fewer stages keeps the first
  stages' temporal kernels."""
  s = SIZES[model_config.size]
  section = model_config.slowfast
  widths = tuple(section.stage_widths) or resnet3d.WIDTHS
  blocks = tuple(section.stage_blocks) or s.blocks
  return s._replace(blocks=blocks, slow_time_kernels=s.slow_time_kernels[:len(widths)],
                    fast_time_kernels=s.fast_time_kernels[:len(widths)]), widths


def slow_frames(frames: int, alpha: int) -> np.ndarray:
  """The Slow pathway's frames of a clip of `frames`: PySlowFast's `pack_pathway_output` (and
  pytorchvideo's PackPathway) `torch.linspace(0, frames - 1, frames // alpha).long()`, which
  released weights were trained with: frames // alpha indices spread evenly from the first
  frame to the last, truncated (32 frames, alpha 4: 0, 4, 8, 13, 17, 22, 26, 31), not every
  alpha-th frame. Computed in float32 as torch's CPU kernel does (step (frames - 1) / (n - 1);
  the first half of the points start + step * i, the others end - step * (n - 1 - i)), so that
  the truncation rounds as there."""
  n = frames // alpha
  if n == 1:
    return np.zeros(1, np.int64)
  end = np.float32(frames - 1)
  step = end / np.float32(n - 1)
  i = np.arange(n)
  points = np.where(i < n // 2, step * i.astype(np.float32),
                    end - step * (n - 1 - i).astype(np.float32))
  return points.astype(np.int64)


class Pathway(nnx.Module):
  """One pathway: resnet3d's Stem and stages of bottlenecks (inner widths `widths`, 4x as many
  out); stage i reads the previous stage's channels plus lateral[i] fused ones."""

  def __init__(self, *, widths, blocks, time_kernels, stem_time_kernel: int, lateral,
               zero_init: bool, dtype, rngs: nnx.Rngs):
    self.stem = resnet3d.Stem(widths[0], time_kernel=stem_time_kernel, dtype=dtype, rngs=rngs)
    stages, c_in = [], widths[0]
    for i, (inner, depth, kernels) in enumerate(zip(widths, blocks, time_kernels)):
      c_out = inner * resnet3d.EXPANSION
      stages.append(resnet3d.stage(c_in + lateral[i], inner, c_out, depth, kernels,
                                   stride=2 if i else 1, zero_init=zero_init, dtype=dtype,
                                   rngs=rngs))
      c_in = c_out
    self.stages = nnx.List(stages)
    self.channels = c_in  # of the last stage's output

  def stage(self, i: int, x, train: bool):
    for block in self.stages[i]:
      x = block(x, train)
    return x


class SlowFast(nnx.Module):
  """Slow and Fast pathways with Fast->Slow lateral fusions, pooled and concatenated, dropout,
  Linear (see the module docstring). `head_windows`: the (T, H, W) windows the head pools in
  the Slow and the Fast pathway (their final maps at the training clip); None: the whole maps
  at any clip size."""

  def __init__(self, *, num_classes: int, widths, blocks, slow_time_kernels, fast_time_kernels,
               alpha: int, fusion_kernel: int, zero_init: bool = False,
               head_dropout: float = 0.0, head_windows=None, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not (len(widths) == len(blocks) == len(slow_time_kernels) == len(fast_time_kernels)):
      raise ValueError(f"widths {widths}, blocks per stage {blocks} and temporal kernels "
                       f"{slow_time_kernels}, {fast_time_kernels} need one entry per stage")
    if any(w % BETA_INV for w in widths):
      raise ValueError(f"widths {widths} must be multiples of {BETA_INV} (the Fast pathway's "
                       "are an eighth of them)")
    self.alpha, self.head_dropout = alpha, head_dropout
    self.head_windows = (None, None) if head_windows is None else tuple(
        tuple(w) for w in head_windows)
    fast_widths = tuple(w // BETA_INV for w in widths)
    # The Fast channels each lateral conv reads: the stem's, then each stage's but the last.
    fast_in = (fast_widths[0], *(w * resnet3d.EXPANSION for w in fast_widths[:-1]))
    common = dict(blocks=blocks, zero_init=zero_init, dtype=dtype, rngs=rngs)
    self.slow = Pathway(widths=widths, time_kernels=slow_time_kernels,
                        stem_time_kernel=SLOW_STEM_TIME,
                        lateral=[FUSION_RATIO * c for c in fast_in], **common)
    self.fast = Pathway(widths=fast_widths, time_kernels=fast_time_kernels,
                        stem_time_kernel=FAST_STEM_TIME, lateral=[0] * len(widths), **common)
    self.fuse = nnx.List([
        layers.ConvBatchNorm(c, FUSION_RATIO * c, (fusion_kernel, 1, 1), stride=(alpha, 1, 1),
                             padding=(fusion_kernel // 2, 0, 0), dtype=dtype, rngs=rngs)
        for c in fast_in])
    self.head = layers.Dense(self.slow.channels + self.fast.channels, num_classes,
                             ("embed", "classes"), rngs=rngs)

  def features(self, video, train: bool = False):
    """The last stage's maps (Slow [B, T / alpha, H / 32, W / 32, C], Fast [B, T, H / 32,
    W / 32, C / 8]) of video [B, T, H, W, 3], T a multiple of alpha."""
    if video.shape[1] % self.alpha:
      raise ValueError(f"SlowFast takes clips of a multiple of alpha={self.alpha} frames, got "
                       f"{video.shape[1]}")
    slow = self.slow.stem(video[:, slow_frames(video.shape[1], self.alpha)], train)
    fast = self.fast.stem(video, train)
    for i, fuse in enumerate(self.fuse):
      # The lateral conv's stride alpha brings the Fast frames to the Slow pathway's count.
      slow = jnp.concatenate([slow, fuse(fast, train).astype(slow.dtype)], axis=-1)
      slow, fast = self.slow.stage(i, slow, train), self.fast.stage(i, fast, train)
    return slow, fast

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("slowfast sees every pixel: set config.model.masking='none'")
    # The mean of the window positions' logits: Linear is linear, so it projects the mean of
    # each pathway's windows (which also holds where their positions do not pair up).
    x = jnp.concatenate([layers.window_average(m.astype(jnp.float32), w).mean(axis=(1, 2, 3))
                         for m, w in zip(self.features(video, train), self.head_windows)],
                        axis=-1)
    x = layers.dropout(x, self.head_dropout, key if train else None)
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> SlowFast:
  s, widths = size(model_config)
  # The head's windows: the final maps of the training clip (stem and pool stride 4, each later
  # stage 2).
  frames, stride = data_config.num_frames, 2 ** (len(widths) + 1)
  windows = (layers.head_window(frames // s.alpha, data_config.crop_size, stride),
             layers.head_window(frames, data_config.crop_size, stride))
  return SlowFast(num_classes=data_config.num_classes, widths=widths, blocks=s.blocks,
                  slow_time_kernels=s.slow_time_kernels, fast_time_kernels=s.fast_time_kernels,
                  alpha=s.alpha, fusion_kernel=s.fusion_kernel,
                  zero_init=model_config.slowfast.zero_init_final_norm,
                  head_dropout=model_config.head_dropout, head_windows=windows,
                  dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # The size (model.size: one of SIZES) gives alpha, the lateral convs' kernel, the temporal
  # kernels and the blocks per stage; these fields override its stages (a narrower or
  # shallower model). The Fast pathway is always an eighth of the Slow one's widths.
  s = ml_collections.ConfigDict()
  # Inner (bottleneck) channels of each Slow stage, multiples of 8, e.g. (16, 32, 64, 128); the
  # Slow stem has the first, each block's output 4x its stage's, the Fast pathway an eighth of
  # each. (): 64, 128, 256, 512.
  s.stage_widths = ()
  s.stage_blocks = ()  # bottleneck blocks per stage (both pathways), e.g. (1, 1, 1, 1)
  # Each block's last BatchNorm starts with scale 0, so each block starts as its shortcut
  # (PySlowFast's RESNET.ZERO_INIT_FINAL_BN, set by its SlowFast recipes). False: scale 1, as
  # pytorchvideo's builder.
  s.zero_init_final_norm = False
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  s = config.model.slowfast
  check_stages(config, "slowfast", len(resnet3d.WIDTHS),
               lambda: (size(config.model)[1], size(config.model)[0].blocks))
  sized, widths = size(config.model)
  if any(w % BETA_INV for w in widths):
    errors.fail("model.slowfast.stage_widths", s.stage_widths, f"give multiples of {BETA_INV}: "
                f"the Fast pathway's widths are an eighth of them")
  frames = config.data.num_frames
  if frames % sized.alpha or frames < sized.alpha:
    errors.fail("data.num_frames", frames, f"model.size={config.model.size!r} gives the Slow "
                f"pathway one frame in alpha={sized.alpha}: give a multiple of {sized.alpha} "
                f"(PySlowFast: 32)")


FAMILY = Family(
    name="slowfast",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
    converters=(pytorchvideo.SLOWFAST, pytorchvideo.PYSLOWFAST_SLOWFAST),
)
