"""MAR on Kinetics-400 (SYSTEMS.md §1): ViT-B with 50% cell running masking, the bridging
classifier on the visible tokens, and lambda = 0.01 times the reconstruction of the invisible
ones, fine-tuned from VideoMAE pre-training.

  python -m vidtx.main --config=configs/mar_k400.py[:vit_l|:ratio75] \\
      --config.init_from=<videomae_pretrain_k400 workdir> --workdir=...

Variants: default ViT-B 50%; `vit_l`: ViT-L 50%; `ratio75`: ViT-B 75%; `cpu`: the recipe at CPU
scale on the built-in data (without the augmentation below), initialised from a
`videomae_pretrain_k400.py:cpu` run given as init_from. Without prepared Kinetics data the other
variants stop and say how to prepare it.
Augmentation as VideoMAE fine-tunes (configuration.FINETUNE_AUGMENTATION): Inception crop,
flips, RandAugment m7 n4, random erasing 0.25, 2 clips per video, mixup 0.8 / cutmix 1.0, label
smoothing 0.1. Test views: 5 clips x 3 crops.
"""

from vidtx import configuration
from vidtx.models import mae


def get_config(arg=None):
  arg = arg or "vit_b"
  if arg not in ("vit_b", "vit_l", "ratio75", "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use vit_b, vit_l, ratio75 or cpu")
  c = configuration.base()
  c.model.name = "mae"
  c.model.mae.classifier = "bridge"
  c.model.masking, c.model.mask_ratio = "cell_running", 0.75 if arg == "ratio75" else 0.5
  c.model.mae.recon_weight = 0.01
  c.label_smoothing = 0.1
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.05
  c.optim.warmup_init_lr, c.optim.min_lr = 1e-6, 1e-6
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.mae.update(mae.CPU_SIZES)
    c.total_steps = 4000
    c.model.drop_path = 0.1
    # As configs/videomae_k400.py:cpu, which it is compared with.
    c.optim.lr, c.optim.warmup_steps, c.optim.layer_decay = 2e-3, 200, 1.0
    return c
  configuration.use_dataset(c, "kinetics400")
  c.data.update(configuration.FINETUNE_AUGMENTATION)
  large = arg == "vit_l"
  c.model.size = "L" if large else "B"
  c.model.drop_path = 0.2 if large else 0.1
  c.model.head_dropout = 0.1 if large else 0.0
  c.optim.lr = 5e-4 if large else 1e-3
  c.optim.layer_decay = 0.75 if large else 0.65
  videos = 256 if large else 512  # 4 or 8 videos per GPU on 64 GPUs per step
  c.batch_size = videos * c.data.repeated_aug  # clips
  c.eval_batch_size = 128  # videos, each with its eval_clips x eval_crops views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // videos
  c.total_steps = (60 if large else 100) * steps_per_epoch
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
