"""R(2+1)D, R3D and MC3 (vidtx.models.r2plus1d) on Kinetics-400, from scratch, with PySlowFast's
recipe for convolutional video networks.

  python -m vidtx.main --config=configs/r2plus1d_k400.py[:variant] --workdir=...

torchvision's Kinetics weights start a run too:
  python -m vidtx.tools.convert_weights --config=configs/r2plus1d_k400.py[:variant] \\
      --checkpoint=<r2plus1d_18 / r3d_18 / mc3_18 .pth> --out=<dir>
  then --config.init_from=<dir>.

Variants: r2plus1d_18 (default), r2plus1d_34 (ResNet-34 depths), r3d_18, mc3_18; cpu: R(2+1)D-18's
layers at a quarter of the widths (16-128 channels), trained from scratch on the built-in data.
Clips (Tran et al., 2018; torchvision's recipe): 16 frames 2 apart (15 fps from 30), 112^2
crops after short-side jitter 128-160 (PySlowFast's 256-320 before 224 crops, halved), flips.
Test: 5 clips x 1 centre crop at short side 128, averaged (torchvision's video-level accuracy).
Recipe (PySlowFast configs/Kinetics/SLOW_8x8_R50.yaml and its kin): SGD momentum 0.9
(Nesterov, PySlowFast's default), lr 0.1 per 64 clips, cosine over 196 epochs after 34 linear
warm-up epochs from 0.01, weight decay 1e-4 (none on BatchNorm's scales and biases: vidtx.optim
decays matrices and kernels only), dropout 0.5 before the classifier.
BatchNorm as PySlowFast's: statistics over groups of 8 clips (one GPU's, BN.NUM_SYNC_DEVICES 1),
and precise BN over 200 training batches before each evaluation.
"""

from vidtx import configuration

VARIANTS = ("r2plus1d_18", "r2plus1d_34", "r3d_18", "mc3_18", "cpu")


def get_config(arg=None):
  arg = arg or "r2plus1d_18"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "r2plus1d"
  c.model.head_dropout = 0.5
  c.optim.name, c.optim.momentum, c.optim.nesterov = "sgd", 0.9, True
  c.optim.weight_decay = 1e-4
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.size = "r2plus1d_18"
    c.model.r2plus1d.stage_widths = (16, 32, 64, 128)
    c.total_steps = 1000
    c.optim.lr, c.optim.warmup_steps, c.optim.warmup_init_lr = 0.05, 50, 0.005
    return c
  c.model.size = arg
  configuration.use_dataset(c, "kinetics400")
  c.data.num_frames, c.data.frame_stride = 16, 2
  c.data.min_resize, c.data.max_resize, c.data.crop_size = 128, 160, 112
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 5, 1, 128
  c.batch_size = 64
  c.model.bn.group_size, c.model.bn.precise_batches = 8, 200
  c.eval_batch_size = 64  # videos, each with 5 views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 196 * steps_per_epoch
  c.optim.lr, c.optim.warmup_init_lr = 0.1, 0.01
  c.optim.warmup_steps = 34 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
