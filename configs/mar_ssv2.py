"""MAR on Something-Something v2 (SYSTEMS.md §1): as configs/mar_k400.py with SSv2's recipe:
lambda = 0.1, layer decay 0.75, 40 epochs, classifier dropout 0.1.

  python -m vidtx.main --config=configs/mar_ssv2.py[:vit_l|:ratio75] \\
      --config.init_from=<VideoMAE pre-training workdir> --workdir=...

Clips are 16 segments' frames (TSN sampling, as MAR and VideoMAE fine-tune on SSv2); flips
swap the left/right class pairs. Augmentation as VideoMAE fine-tunes
(configuration.FINETUNE_AUGMENTATION), label smoothing 0.1. Test views: 2 clips x 3 crops.
Variant `cpu`: configs/mar_k400.py:cpu with SSv2's lambda, classifier dropout, segment sampling
and label-swapping flips, on the built-in data (whose move_left/move_right pair the flips swap).
"""

from vidtx import configuration


def get_config(arg=None):
  arg = arg or "vit_b"
  if arg not in ("vit_b", "vit_l", "ratio75", "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use vit_b, vit_l, ratio75 or cpu")
  large = arg == "vit_l"
  c = configuration.base()
  c.model.name = "mae"
  c.model.mae.classifier = "bridge"
  c.model.masking, c.model.mask_ratio = "cell_running", 0.75 if arg == "ratio75" else 0.5
  c.model.mae.recon_weight = 0.1
  c.model.head_dropout = 0.1
  c.label_smoothing = 0.1
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.05
  c.optim.warmup_init_lr, c.optim.min_lr = 1e-6, 1e-6
  if arg == "cpu":
    c = configuration.load(configuration.sibling(__file__, "mar_k400.py:cpu"))
    c.model.mae.recon_weight, c.model.head_dropout = 0.1, 0.1
    c.data.sampler, c.data.frame_stride, c.data.flip = "segment", 1, "swap_labels"
    return c
  configuration.use_dataset(c, "ssv2")
  c.data.update(configuration.FINETUNE_AUGMENTATION)
  c.model.size = "L" if large else "B"
  c.model.drop_path = 0.2 if large else 0.1
  c.optim.lr = 2.5e-4 if large else 1e-3
  c.optim.layer_decay = 0.75
  videos = 128 if large else 1024  # 2 or 16 videos per GPU on 64 GPUs per step
  c.batch_size = videos * c.data.repeated_aug  # clips
  c.eval_batch_size = 128  # videos, each with its eval_clips x eval_crops views
  steps_per_epoch = configuration.EPOCH_SIZES["ssv2"] // videos
  c.total_steps = 40 * steps_per_epoch
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
