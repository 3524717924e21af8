"""R(2+1)D, R3D and MC3 (vidtx.models.r2plus1d) on Kinetics-400, from scratch, with PySlowFast's
recipe for convolutional video networks.

  python -m vidtx.main --config=configs/r2plus1d_k400.py[:variant] --workdir=...

torchvision's Kinetics weights start a run too:
  python -m vidtx.tools.convert_weights --config=configs/r2plus1d_k400.py[:variant] \\
      --checkpoint=<r2plus1d_18 / r3d_18 / mc3_18 .pth> --out=<dir>
  then --config.init_from=<dir>.

Variants: r2plus1d_18 (default), r2plus1d_34 (ResNet-34 depths), r3d_18, mc3_18; cpu: R(2+1)D-18's
layers at a quarter of the widths (16-128 channels) with the stem striding 4 in space
(model.r2plus1d.stem_stride; 8x8 maps in the first stage, as cnn3d's), trained from scratch on
the built-in data with slow_k400.py's cpu_recipe (AdamW; BENCHMARKS.md: 1000 steps on one core).
Clips (Tran et al., 2018; torchvision's recipe): 16 frames 2 apart (15 fps from 30), 112^2
crops after short-side jitter 128-160 (PySlowFast's 256-320 before 224 crops, halved), flips.
Test: 5 clips x 1 centre crop at short side 128, averaged (torchvision's video-level accuracy).
Recipe (configs/slow_k400.py's kinetics_recipe, PySlowFast's SLOW_8x8_R50.yaml): SGD momentum 0.9
(Nesterov, PySlowFast's default), lr 0.1 per 64 clips, cosine over 196 epochs after 34 linear
warm-up epochs from 0.01, weight decay 1e-4 (none on BatchNorm's scales and biases: vidtx.optim
decays matrices and kernels only), dropout 0.5 before the classifier.
BatchNorm as PySlowFast's: statistics over groups of 8 clips (one GPU's, BN.NUM_SYNC_DEVICES 1),
and precise BN over 200 training batches before each evaluation.
"""

from vidtx import configuration

SLOW = configuration.sibling(__file__, "slow_k400.py")

VARIANTS = ("r2plus1d_18", "r2plus1d_34", "r3d_18", "mc3_18", "cpu")


def get_config(arg=None):
  arg = arg or "r2plus1d_18"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "r2plus1d"
  configuration.load_module(SLOW).kinetics_recipe(c, arg == "cpu", frames=16, stride=2)
  if arg == "cpu":
    c.model.size = "r2plus1d_18"
    c.model.r2plus1d.stage_widths = (16, 32, 64, 128)
    c.model.r2plus1d.stem_stride = 4  # 8x8 maps in the first stage, as cnn3d's stem
    return c
  c.model.size = arg
  # Clips of 112^2 (torchvision's), not PySlowFast's 224^2.
  c.data.min_resize, c.data.max_resize, c.data.crop_size = 128, 160, 112
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 5, 1, 128
  c.data.eval_crop_size = 0
  c.eval_batch_size = 64  # videos, each with 5 views
  return c
