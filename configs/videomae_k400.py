"""VideoMAE fine-tuning on Kinetics-400 (SYSTEMS.md §2): ViT-B on all 1568 tokens, mean pool +
fc_norm head. The baseline MAR is compared with.

  python -m vidtx.main --config=configs/videomae_k400.py \\
      --config.init_from=<videomae_pretrain_k400 workdir> --workdir=...

Variants: B (default); `cpu`: the same recipe at CPU scale on the built-in data (without the
augmentation below), initialised from a `videomae_pretrain_k400.py:cpu` run given as init_from.
Augmentation (configuration.FINETUNE_AUGMENTATION): Inception crop, flips, RandAugment m7 n4,
random erasing 0.25, 2 clips per video, mixup 0.8 / cutmix 1.0, label smoothing 0.1. Test views:
5 clips x 3 crops.
"""

from vidtx import configuration


def get_config(arg=None):
  arg = arg or "B"
  if arg not in ("B", "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use 'B' or 'cpu'")
  c = configuration.base()
  c.model.name = "vit"
  c.model.vit.pool = "mean"
  c.model.head_init_scale = 0.001
  c.model.drop_path = 0.1
  c.label_smoothing = 0.1
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.05
  c.optim.layer_decay = 0.75
  c.optim.warmup_init_lr, c.optim.min_lr = 1e-6, 1e-6
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.total_steps = 4000
    # Pre-training on this data learns little (the masked backgrounds are unpredictable), so
    # there is nothing in the lower layers to protect with layer decay.
    c.optim.lr, c.optim.warmup_steps, c.optim.layer_decay = 2e-3, 200, 1.0
    return c
  configuration.use_dataset(c, "kinetics400")
  c.data.update(configuration.FINETUNE_AUGMENTATION)
  c.model.size = "B"
  videos = 384  # 6 videos x 64 GPUs per step, each giving data.repeated_aug clips
  c.batch_size = videos * c.data.repeated_aug
  c.eval_batch_size = 128  # videos, each with its eval_clips x eval_crops views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // videos
  c.total_steps = 75 * steps_per_epoch
  c.optim.lr = 5e-4 * videos / 256  # VideoMAE scales by the videos per step
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
