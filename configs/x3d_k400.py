"""X3D-XS, S, M and L (vidtx.models.x3d) on Kinetics-400, from scratch, with PySlowFast's X3D
recipe (configs/Kinetics/X3D_{XS,S,M,L}.yaml).

  python -m vidtx.main --config=configs/x3d_k400.py[:variant] --workdir=...

pytorchvideo's Kinetics weights (its hub's X3D_XS.pyth ... X3D_L.pyth) start a run too:
  python -m vidtx.tools.convert_weights --config=configs/x3d_k400.py[:variant] \\
      --checkpoint=<X3D_M.pyth> --out=<dir>
  then --config.init_from=<dir>. PySlowFast's x3d_*.pyth convert the same way with
  --config.model.x3d.shortcut_norm=always (its first block's shortcut has a BatchNorm).

Variants: xs, s, m (default), l; cpu: X3D's blocks at two thirds of the widths (16-128
channels) and its base depths (1, 2, 5, 3 blocks: XS's before the depth expansion, half the
work), each block's last BatchNorm scale starting at 1, trained from scratch on the built-in
data with slow_k400.py's cpu_recipe (AdamW at 2e-3, as configs/cnn3d_synthetic.py; the SGD
recipe scaled down did not learn in short runs).
Clips (frames x stride, train crop after short-side jitter): XS 4x12, 160 after 182-228; S 13x6,
160 after 182-228; M 16x5, 224 after 256-320; L 16x5, 312 after 356-446; flips.
Test: 10 clips x 3 crops at the test crop size (XS/S 182, M 256, L 356) from the short side
resized to it, as PySlowFast (data.eval_crop_size).
Recipe: SGD momentum 0.9, Nesterov, lr 0.1 per 128 clips (L: 0.05 per 64; BASE_LR is per
machine of 8 GPUs and scales with the machines), cosine over 300 epochs (L: 256) after 35 linear
warm-up epochs from 0.01, weight decay 5e-5 (none on BatchNorm's scales and
biases; vidtx.optim decays kernels and matrices only, so neither the SE convs' nor the
classifier's biases, which PySlowFast decays), dropout 0.5 before the classifier, each block's
last BatchNorm scale starting at zero (model.x3d.zero_init_residual), BatchNorm statistics over
each GPU's clips (16; L: 8) and precise BN over 200 batches before each evaluation.
"""

from vidtx import configuration

# configs/slow_k400.py, whose cpu recipe (cpu_recipe) the cpu variant shares.
SLOW = configuration.sibling(__file__, "slow_k400.py")

VARIANTS = ("xs", "s", "m", "l", "cpu")
# variant -> (frames, stride, train short side min and max, train crop, test short side)
CLIPS = {
    "xs": (4, 12, 182, 228, 160, 182),
    "s": (13, 6, 182, 228, 160, 182),
    "m": (16, 5, 256, 320, 224, 256),
    "l": (16, 5, 356, 446, 312, 356),
}


def get_config(arg=None):
  arg = arg or "m"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "x3d"
  if arg == "cpu":
    configuration.load_module(SLOW).cpu_recipe(c, steps=1000)
    c.model.size = "xs"
    c.model.x3d.stage_widths = (16, 32, 64, 128)
    c.model.x3d.stage_blocks = (1, 2, 5, 3)  # X3D's base depths, before XS's expansion x2.2
    c.model.x3d.zero_init_residual = False  # see slow_k400.py's cpu variant
    return c
  c.model.head_dropout = 0.5
  c.optim.name, c.optim.momentum, c.optim.nesterov = "sgd", 0.9, True
  c.optim.weight_decay = 5e-5
  c.model.size = arg
  configuration.use_dataset(c, "kinetics400")
  frames, stride, short_min, short_max, crop, test_short = CLIPS[arg]
  c.data.num_frames, c.data.frame_stride = frames, stride
  c.data.min_resize, c.data.max_resize, c.data.crop_size = short_min, short_max, crop
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 10, 3, test_short
  c.data.eval_crop_size = test_short
  # PySlowFast's TRAIN.BATCH_SIZE per machine of 8 GPUs, each normalising its own clips.
  c.batch_size = 64 if arg == "l" else 128
  c.model.bn.group_size = c.batch_size // 8
  c.model.bn.precise_batches = 200
  c.eval_batch_size = 8  # videos, each with 30 views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = (256 if arg == "l" else 300) * steps_per_epoch
  c.optim.lr = 0.1 * c.batch_size / 128
  c.optim.warmup_init_lr = 0.01
  c.optim.warmup_steps = 35 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
