"""Slow-only R50 8x8 (vidtx.models.resnet3d) on Kinetics-400, from scratch, with PySlowFast's
recipe (configs/Kinetics/SLOW_8x8_R50.yaml). configs/i3d_k400.py shares it (`recipe`),
configs/slowfast_k400.py, r2plus1d_k400.py and s3d_k400.py its training part
(`kinetics_recipe`), and every convolutional family's :cpu variant its `cpu_recipe`.

  python -m vidtx.main --config=configs/slow_k400.py[:variant] --workdir=...

pytorchvideo's Kinetics weights (its hub's SLOW_8x8_R50.pyth) start a run too:
  python -m vidtx.tools.convert_weights --config=configs/slow_k400.py \\
      --checkpoint=<SLOW_8x8_R50.pyth> --out=<dir>
  then --config.init_from=<dir>.
An ImageNet ResNet-50 (torchvision's or timm's `resnet50` state dict) converts into the
one-frame image model, which init_from inflates (--config.init_from_inflation: "central" keeps
each frame's 2-D response exactly, "average" is I3D's inflation; see vidtx.weights.inflate).

Variants: r50 (default; 32.5M parameters, 41.7 GMACs per 8x224 view), r101 (ResNet-101
depths); cpu: Slow's temporal kernels in one block per stage at a quarter of the widths
(16-128 inner channels), trained from scratch on the built-in data by `cpu_recipe` (AdamW at
2e-3, as configs/cnn3d_synthetic.py; this file's SGD recipe scaled down stayed at chance), with
every block's last BatchNorm scale starting at 1: Slow's temporal kernels sit in res4's and
res5's residual branches only, which a zero scale closes until it grows (BENCHMARKS.md).
Clips: 8 frames 8 apart, 224^2 crops after short-side jitter 256-320, flips. Test: 10 clips x 3
crops of 256 (PySlowFast's TEST_CROP_SIZE) from the short side 256.
Recipe: SGD momentum 0.9 (Nesterov, PySlowFast's default), lr 0.1 per 64 clips, cosine over 196
epochs after 34 linear warm-up epochs from 0.01, weight decay 1e-4 (none on BatchNorm's scales
and biases: vidtx.optim decays kernels and matrices only, so not the classifier's bias, which
PySlowFast decays), dropout 0.5 before the classifier, each block's last BatchNorm scale
starting at zero (RESNET.ZERO_INIT_FINAL_BN: model.resnet3d.zero_init_final_norm), BatchNorm
statistics over each GPU's 8 clips (64 over 8 GPUs) and precise BN over 200 batches before each
evaluation.
"""

from vidtx import configuration

VARIANTS = ("r50", "r101", "cpu")


def recipe(c, arch: str, arg: str) -> None:
  """Sets `c` up for `arch` ("slow" or "i3d") at variant `arg` (one of VARIANTS)."""
  c.model.name = "resnet3d"
  c.model.resnet3d.zero_init_final_norm = True
  kinetics_recipe(c, arg == "cpu", frames=8, stride=8)
  if arg == "cpu":
    c.model.size = f"{arch}_r50"
    c.model.resnet3d.stage_widths = (16, 32, 64, 128)
    c.model.resnet3d.stage_blocks = (1, 1, 1, 1)
    # Slow's temporal kernels are all in res4's and res5's residual branches: a zero final
    # BatchNorm scale keeps their gradients at zero until it grows, and the network blind to
    # frame order (28% validation top-1 after 400 steps; with scale 1, 99.6%).
    c.model.resnet3d.zero_init_final_norm = False
  else:
    c.model.size = f"{arch}_{arg}"


def kinetics_recipe(c, cpu: bool, frames: int, stride: int) -> None:
  """PySlowFast's Kinetics-400 recipe for its ResNets (Slow, I3D, SlowFast) on clips of
  `frames` frames `stride` apart; `cpu`: `cpu_recipe` instead. The family (c.model.name) is
  set first; its size and section after."""
  if cpu:
    cpu_recipe(c)
    return
  c.model.head_dropout = 0.5
  c.optim.name, c.optim.momentum, c.optim.nesterov = "sgd", 0.9, True
  c.optim.weight_decay = 1e-4
  configuration.use_dataset(c, "kinetics400")
  c.data.num_frames, c.data.frame_stride = frames, stride
  c.data.min_resize, c.data.max_resize, c.data.crop_size = 256, 320, 224
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 10, 3, 256
  c.data.eval_crop_size = 256
  c.batch_size = 64
  c.model.bn.group_size = 8  # PySlowFast's 64 clips over 8 GPUs, each normalising its own
  c.model.bn.precise_batches = 200
  c.eval_batch_size = 16  # videos, each with 30 views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 196 * steps_per_epoch
  c.optim.lr, c.optim.warmup_init_lr = 0.1, 0.01
  c.optim.warmup_steps = 34 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch


def cpu_recipe(c, steps: int = 1000) -> None:
  """The convolutional families' :cpu training (their configs call it; the family is set
  first, its size and section after): the built-in synthetic data (configuration.cpu_scale,
  32 clips a step) under configs/cnn3d_synthetic.py's recipe, AdamW at lr 2e-3 after 50
  linear warm-up steps from 0, cosine to 0 over `steps`, weight decay 0.05, no dropout.
  PySlowFast's SGD recipe scaled down (lr 0.05, dropout 0.5) left them at chance in short
  runs (BENCHMARKS.md)."""
  configuration.cpu_scale(c)
  c.model.head_dropout = 0.0
  c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 2e-3, 0.05
  c.optim.warmup_steps, c.optim.warmup_init_lr, c.optim.min_lr = 50, 0.0, 0.0
  c.total_steps = steps


def get_config(arg=None):
  arg = arg or "r50"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  recipe(c, "slow", arg)
  return c
