"""MViTv2 on Something-Something v2 (PySlowFast's configs/SSv2/MVITv2_S_16x4.yaml): MViTv2-S
on 16 frames of 224^2 by segment sampling, flips that swap left/right labels, 174 classes.

  python -m vidtx.main --config=configs/mvitv2_ssv2.py[:cpu] \\
      --config.init_from=<a Kinetics-400 MViTv2-S run or converted checkpoint> --workdir=...

PySlowFast fine-tunes from Kinetics-400 with SGD (Nesterov momentum 0.9; its BASE_LR 0.0025,
taken here per 64 clips and scaled linearly like the Kinetics recipe's), weight decay 1e-4,
cosine over 100 epochs after 3 warm-up epochs from 1e-4, drop path 0.4, dropout 0.5, mixup 0.8
/ cutmix 1.0, RandAugment m7 n4, random erasing 0.25, label smoothing 0.1, one clip per video.
Test: 1 clip x 3 crops at 224.
Variants: none (default), cpu: MViTv2-S's blocks at CPU scale on the built-in data.
"""

from vidtx import configuration

# configs/mvit_k400.py, whose recipe this config shares.
MVIT = configuration.sibling(__file__, "mvit_k400.py")


def get_config(arg=None):
  if arg not in (None, "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use none or 'cpu'")
  c = configuration.base()
  c.model.size = "v2_s"
  configuration.load_module(MVIT).recipe(c, arg or "", frames=16, stride=4, drop_path=0.4)
  c.optim.name, c.optim.momentum = "sgd", 0.9
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 0.0
  c.optim.warmup_init_lr = 1e-4
  if arg == "cpu":
    c.data.sampler, c.data.frame_stride, c.data.flip = "segment", 1, "swap_labels"
    c.optim.warmup_init_lr = 0.0
    return c
  configuration.use_dataset(c, "ssv2")
  c.data.repeated_aug = 1
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 1, 3, 224
  c.batch_size, c.eval_batch_size = 64, 32
  steps_per_epoch = configuration.EPOCH_SIZES["ssv2"] // c.batch_size
  c.total_steps = 100 * steps_per_epoch
  c.optim.lr = 0.0025 * c.batch_size / 64
  c.optim.warmup_steps = 3 * steps_per_epoch
  c.eval_every_steps = 2 * steps_per_epoch
  return c
