"""3-D ResNets with inflated 2-D ResNet blocks: Slow-only R50 ("SlowFast Networks for Video
Recognition", Feichtenhofer et al., 2019: the Slow pathway alone) and I3D R50 (Carreira and
Zisserman, 2017, as a ResNet-50), as pytorchvideo 0.1.5 builds them (`pytorchvideo.models.hub`
`slow_r50`, `i3d_r50`; `pytorchvideo.models.resnet.create_resnet`), and the same at ResNet-101
depths (`slow_r101`, `i3d_r101`: create_resnet(model_depth=101) with the R50's kernels).

video [B, T, H, W, 3] -> stem: a kt x 7 x 7 conv to 64 channels (stride 1, 2, 2; padding
kt // 2, 3, 3), BatchNorm, ReLU, max pool 1x3x3 (stride 1, 2, 2; padding 0, 1, 1) -> four
stages (res2-res5) of bottleneck blocks (`Bottleneck`) of inner widths 64, 128, 256, 512 and
4x as many output channels; the first block of res3-res5 strides 2 in space -> average pool
over (T, H, W) (the head's window, below) -> dropout (model.head_dropout) -> Linear.

The sizes differ in their temporal kernels (nothing strides in time):
- Slow: stem 1x7x7; the bottlenecks' first 1x1x1 conv (conv_a) is 1x1x1 in res2 and res3 and
  3x1x1 in res4 and res5 (temporal convolution only where the features are semantic);
- I3D: stem 5x7x7; conv_a 3x1x1 in every block of res2, in blocks 0, 2, 4 of res3 and res4, and
  in block 1 of res5 (the kernel patterns (3,), (3, 1), (3, 1), (1, 3), cycled over the
  blocks); a 2x1x1 max pool (stride 2) after res2 halves the frames.
The head, as pytorchvideo's: it average-pools windows of the final map's size at the training
clip (config.data: num_frames, or half with I3D's time pool, by crop_size / 32 squared: the
hub's (8, 7, 7) and (4, 7, 7) at 8 frames of 224^2) with stride 1, projects each and averages
the projections. At the training clip (or a smaller one) that is the global average; at a
larger eval crop (data.eval_crop_size, e.g. PySlowFast's 256) it averages the windows. The
projection being linear, this model averages the windows' features before it: the same logits.

BatchNorm is PyTorch's (momentum 0.1, eps 1e-5), its running averages `nnx.BatchStat`s.
`Stem`, `Bottleneck` and `stage` are the pieces a two-pathway network (SlowFast) builds from.

Parameter paths mirror pytorchvideo's (vidtx.weights.pytorchvideo): "stem/{conv, norm}"
(blocks.0), "stages/<i>/<j>/{a, b, c}/{conv, norm}" (blocks.<k>.res_blocks.<j>.branch2.conv_a,
norm_a, ...), "stages/<i>/<j>/shortcut/{conv, norm}" (branch1_conv, branch1_norm),
"head/{kernel, bias}" (the last block's proj); PySlowFast's `.pyth` files of Slow and I3D
convert too. A torchvision or timm 2-D ResNet-50 converts into the one-frame image model
(`image_model`: every temporal kernel 1), which init_from inflates (vidtx.weights.image,
vidtx.weights.inflate).
"""

import typing

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import Family, check_stages
from vidtx.weights import pytorchvideo

# Inner (bottleneck) channels of res2-res5; a block's output has EXPANSION times as many.
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
R50_BLOCKS, R101_BLOCKS = (3, 4, 6, 3), (3, 4, 23, 3)


class Size(typing.NamedTuple):
  """A size's temporal structure and depth."""
  stem_time_kernel: int  # the stem conv's temporal kernel (padding kt // 2)
  # Per stage, the temporal kernels of its blocks' conv_a, a pattern cycled over the blocks.
  time_kernels: tuple[tuple[int, ...], ...]
  blocks: tuple[int, ...]  # bottleneck blocks per stage
  time_pool: bool  # a 2x1x1 max pool (stride 2) after the first stage (I3D)


SLOW = dict(stem_time_kernel=1, time_kernels=((1,), (1,), (3,), (3,)), time_pool=False)
I3D = dict(stem_time_kernel=5, time_kernels=((3,), (3, 1), (3, 1), (1, 3)), time_pool=True)
SIZES = {
    "slow_r50": Size(**SLOW, blocks=R50_BLOCKS),
    "i3d_r50": Size(**I3D, blocks=R50_BLOCKS),
    "slow_r101": Size(**SLOW, blocks=R101_BLOCKS),
    "i3d_r101": Size(**I3D, blocks=R101_BLOCKS),
}


def size(model_config: ml_collections.ConfigDict) -> tuple[Size, tuple[int, ...]]:
  """(the size, inner widths per stage): the size's blocks and WIDTHS unless the section
  overrides them; a model of fewer stages keeps the first stages' temporal kernels."""
  s = SIZES[model_config.size]
  section = model_config.resnet3d
  widths = tuple(section.stage_widths) or WIDTHS
  blocks = tuple(section.stage_blocks) or s.blocks
  return s._replace(time_kernels=s.time_kernels[:len(widths)], blocks=blocks), widths


class Stem(nnx.Module):
  """conv kt x 7 x 7 (stride 1, 2, 2; padding kt // 2, 3, 3) -> BatchNorm -> ReLU -> max pool
  1x3x3 (stride 1, 2, 2; padding 0, 1, 1): a quarter of the side, every frame kept."""

  def __init__(self, c_out: int, *, time_kernel: int = 1, c_in: int = 3,
               dtype=jnp.float32, rngs: nnx.Rngs):
    # The stem reads the 3 RGB channels, which split over no mesh axis.
    self.conv = layers.Conv3d(c_in, c_out, (time_kernel, 7, 7), stride=(1, 2, 2),
                              padding=(time_kernel // 2, 3, 3), axes=(None, "conv_out"),
                              dtype=dtype, rngs=rngs)
    self.norm = layers.BatchNorm(c_out, rngs=rngs)

  def __call__(self, x, train: bool):
    x = jax.nn.relu(self.norm(self.conv(x), train))
    return layers.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))


class Bottleneck(nnx.Module):
  """The bottleneck residual block: relu(c(relu(b(relu(a(x))))) + shortcut(x)), where
  - a: conv time_kernel x 1 x 1 (padding time_kernel // 2) c_in -> inner, BatchNorm;
  - b: conv 1x3x3 (stride 1, stride, stride; padding 0, 1, 1) inner -> inner, BatchNorm (the
    block's spatial stride is here, as in ResNet v1.5 and PySlowFast's STRIDE_1X1=False);
  - c: conv 1x1x1 inner -> c_out, BatchNorm (scale 0 at the start with `zero_init`: the block
    starts as its shortcut, PySlowFast's ZERO_INIT_FINAL_BN);
  - shortcut: the identity, or where the shape changes (c_in != c_out or stride > 1) a 1x1x1
    conv striding (1, stride, stride) and BatchNorm.
  `c_in` may be wider than the previous block's output: SlowFast concatenates its lateral
  connections in front of a stage."""

  def __init__(self, c_in: int, inner: int, c_out: int, *, time_kernel: int = 1,
               stride: int = 1, zero_init: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    unit = lambda c_i, c_o, kernel, **kw: layers.ConvBatchNorm(c_i, c_o, kernel, dtype=dtype,
                                                               rngs=rngs, **kw)
    self.a = unit(c_in, inner, (time_kernel, 1, 1), padding=(time_kernel // 2, 0, 0))
    self.b = unit(inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))
    self.c = unit(inner, c_out, 1, activation=None)
    if zero_init:
      self.c.norm.scale[...] = jnp.zeros_like(self.c.norm.scale[...])
    if stride != 1 or c_in != c_out:
      self.shortcut = unit(c_in, c_out, 1, stride=(1, stride, stride), activation=None)
    else:
      self.shortcut = None

  def __call__(self, x, train: bool):
    y = self.c(self.b(self.a(x, train), train), train)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x, train)))


def stage(c_in: int, inner: int, c_out: int, depth: int, time_kernels, *, stride: int = 1,
          zero_init: bool = False, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.List:
  """One stage: `depth` bottlenecks c_in -> c_out (then c_out -> c_out) of `inner` channels;
  the first strides `stride` in space; block j's conv_a has the temporal kernel
  time_kernels[j % len(time_kernels)] (a pattern cycled, as I3D's (3, 1))."""
  return nnx.List([
      Bottleneck(c_in if j == 0 else c_out, inner, c_out,
                 time_kernel=time_kernels[j % len(time_kernels)],
                 stride=stride if j == 0 else 1, zero_init=zero_init, dtype=dtype, rngs=rngs)
      for j in range(depth)])


class ResNet3D(nnx.Module):
  """Stem, stages of bottlenecks (I3D: a temporal max pool after the first), average pool,
  dropout, Linear (see the module docstring). `head_window`: the (T, H, W) window the head
  pools (the final map at the training clip); None: the whole map at any clip size."""

  def __init__(self, *, num_classes: int, widths, blocks, time_kernels, stem_time_kernel: int,
               time_pool: bool, zero_init: bool = False, head_dropout: float = 0.0,
               head_window=None, dtype=jnp.float32, rngs: nnx.Rngs):
    if not len(widths) == len(blocks) == len(time_kernels):
      raise ValueError(f"widths {widths}, blocks per stage {blocks} and temporal kernels "
                       f"{time_kernels} must have one entry per stage")
    self.time_pool, self.head_dropout = time_pool, head_dropout
    self.head_window = None if head_window is None else tuple(head_window)
    self.stem = Stem(widths[0], time_kernel=stem_time_kernel, dtype=dtype, rngs=rngs)
    stages, c_in = [], widths[0]
    for i, (inner, depth, kernels) in enumerate(zip(widths, blocks, time_kernels)):
      stages.append(stage(c_in, inner, inner * EXPANSION, depth, kernels,
                          stride=2 if i else 1, zero_init=zero_init, dtype=dtype, rngs=rngs))
      c_in = inner * EXPANSION
    self.stages = nnx.List(stages)
    self.head = layers.Dense(c_in, num_classes, ("embed", "classes"), rngs=rngs)

  def features(self, video, train: bool = False):
    """The last stage's map [B, T', H / 32, W / 32, C] (T' = T, or T / 2 with the time pool)."""
    x = self.stem(video, train)
    for i, blocks in enumerate(self.stages):
      for block in blocks:
        x = block(x, train)
      if i == 0 and self.time_pool:
        x = layers.max_pool3d(x, (2, 1, 1), (2, 1, 1), (0, 0, 0))
    return x

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `train`: BatchNorm on the
    batch's statistics (updating its running averages) and dropout driven by `key`."""
    if keep is not None:
      raise ValueError("resnet3d sees every pixel: set config.model.masking='none'")
    x = layers.window_average(self.features(video, train).astype(jnp.float32),
                              self.head_window)
    # The mean of the windows' logits: Linear is linear, so project the windows' mean.
    x = x.mean(axis=(1, 2, 3))
    x = layers.dropout(x, self.head_dropout, key if train else None)
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> ResNet3D:
  s, widths = size(model_config)
  # The head's window: the final map of the training clip (stem and pool stride 4, each later
  # stage 2; I3D's time pool halves the frames).
  frames = data_config.num_frames // 2 if s.time_pool else data_config.num_frames
  window = layers.head_window(frames, data_config.crop_size, 2 ** (len(widths) + 1))
  return ResNet3D(num_classes=data_config.num_classes, widths=widths, blocks=s.blocks,
                  time_kernels=s.time_kernels, stem_time_kernel=s.stem_time_kernel,
                  time_pool=s.time_pool, zero_init=model_config.resnet3d.zero_init_final_norm,
                  head_dropout=model_config.head_dropout, head_window=window,
                  dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def image_model(model_config: ml_collections.ConfigDict, side: int, num_classes: int,
                clip_style: bool, rngs: nnx.Rngs) -> ResNet3D:
  """The one-frame 2-D ResNet that init_from inflates into this family's model
  (`Family.image_model`): the config's widths and blocks with every temporal kernel 1 and no
  temporal pool. `side` and `clip_style` are a ViT's (patches per side, CLIP's conventions):
  a CNN has neither."""
  del side, clip_style
  s, widths = size(model_config)
  return ResNet3D(num_classes=num_classes, widths=widths, blocks=s.blocks,
                  time_kernels=((1,),) * len(widths), stem_time_kernel=1, time_pool=False,
                  rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # The size (model.size: one of SIZES) gives the temporal kernels, the time pool and the
  # blocks per stage; these fields override its stages (a narrower or shallower model).
  s = ml_collections.ConfigDict()
  # Inner (bottleneck) channels of each stage, e.g. (16, 32, 64, 128); the stem has the first,
  # each block's output 4x its stage's. (): 64, 128, 256, 512.
  s.stage_widths = ()
  s.stage_blocks = ()  # bottleneck blocks per stage, e.g. (1, 1, 1, 1); (): the size's
  # Each block's last BatchNorm starts with scale 0, so each block starts as its shortcut
  # (PySlowFast's RESNET.ZERO_INIT_FINAL_BN, set by its Kinetics recipes). False: scale 1, as
  # pytorchvideo's builder.
  s.zero_init_final_norm = False
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  check_stages(config, "resnet3d", len(WIDTHS),
               lambda: (size(config.model)[1], size(config.model)[0].blocks))
  sized, _ = size(config.model)
  if sized.time_pool and config.data.num_frames < 2:
    errors.fail("data.num_frames", config.data.num_frames, f"model.size={config.model.size!r} "
                "halves the frames after its first stage: give 2 or more")


FAMILY = Family(
    name="resnet3d",
    build=build,
    sizes=SIZES,
    reads=("size", "head_dropout", "dtype"),
    any_crop=True,
    section=section,
    check=_check,
    converters=(pytorchvideo.RESNET, pytorchvideo.PYSLOWFAST_RESNET),
    image_model=image_model,
)
