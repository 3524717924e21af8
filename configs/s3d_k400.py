"""S3D and S3D-G (vidtx.models.s3d) on Kinetics-400, from scratch, with PySlowFast's recipe for
convolutional video networks.

  python -m vidtx.main --config=configs/s3d_k400.py[:variant] --workdir=...

torchvision's Kinetics S3D weights start the s3d variant too:
  python -m vidtx.tools.convert_weights --config=configs/s3d_k400.py \\
      --checkpoint=<s3d .pth> --out=<dir>
  then --config.init_from=<dir>.

Variants: s3d (default; torchvision's S3D), s3d_g (feature gating, model.s3d.gating); cpu: S3D's
layers at a quarter of the widths, trained from scratch on the built-in data with
slow_k400.py's cpu_recipe but AdamW at 4e-3 over 3000 steps: it learns more slowly than the
other families (100% validation top-1 after 3000 steps, 73.8% after 1000; BENCHMARKS.md).
Clips (Xie et al., 2018): 64 frames 2 apart (15 fps from 30, as torchvision's recipe), 224^2
crops after PySlowFast's short-side jitter 256-320, flips. Test: 3 clips x 1 centre crop at
short side 256, averaged: together they span the 10-second video, which the paper tests whole
(fully convolutional over 250 frames).
Recipe (configs/slow_k400.py's kinetics_recipe, PySlowFast's SLOW_8x8_R50.yaml): SGD momentum 0.9
(Nesterov, PySlowFast's default), lr 0.1 per 64 clips, cosine over 196 epochs after 34 linear
warm-up epochs from 0.01, weight decay 1e-4 (none on BatchNorm's scales and biases: vidtx.optim
decays matrices and kernels only; the gates' Linears decay), dropout 0.5 before the classifier.
BatchNorm keeps torchvision S3D's momentum 0.001 and eps 1e-3 (the cpu variant's short run: 0.01).
BatchNorm as PySlowFast's: statistics over groups of 8 clips (one GPU's, BN.NUM_SYNC_DEVICES 1),
and precise BN over 200 training batches before each evaluation.
"""

from vidtx import configuration

SLOW = configuration.sibling(__file__, "slow_k400.py")

VARIANTS = ("s3d", "s3d_g", "cpu")


def get_config(arg=None):
  arg = arg or "s3d"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "s3d"
  configuration.load_module(SLOW).kinetics_recipe(c, arg == "cpu", frames=64, stride=2)
  if arg == "cpu":
    c.model.size = "small"
    c.model.bn.momentum = 0.01  # running averages over the last ~100 steps
    # S3D learns the synthetic data more slowly than the other families: twice cpu_recipe's
    # lr gave 73.8% validation top-1 after 1000 steps (45.5% at 2e-3), and 100% after 3000.
    c.optim.lr, c.total_steps = 4e-3, 3000
    return c
  c.model.size = "s3d"
  c.model.s3d.gating = arg == "s3d_g"
  # 3 clips x 1 centre crop of 224 span the 10-second video (the paper tests it whole).
  c.data.eval_clips, c.data.eval_crops, c.data.eval_crop_size = 3, 1, 0
  c.eval_batch_size = 32  # videos, each with 3 views
  return c
