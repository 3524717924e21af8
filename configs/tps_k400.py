"""TPS on Kinetics-400 (SYSTEMS.md §3): a 2-D Swin over 32 frames 2 apart at 224^2, made
spatiotemporal by temporal patch shift (vidtx.models.tps), average pool, dropout 0.5, Linear.

  python -m vidtx.tools.convert_weights --config=configs/tps_k400.py[:swin_b] \\
      --config.data.num_classes=1000 --checkpoint=<HF Swin directory> --out=<swin dir>
  python -m vidtx.main --config=configs/tps_k400.py[:swin_b] --config.init_from=<swin dir> \\
      --workdir=...

<HF Swin directory>: an ImageNet-1K Swin of the same size saved by transformers
(microsoft/swin-tiny-patch4-window7-224, microsoft/swin-base-patch4-window7-224). The
conversion inflates it as TPS does (patch kernel repeated over the 2 frames and halved,
relative position tables tiled over Δt); with 1000 classes it keeps ImageNet's head, which
init_from then leaves out for a fresh 400-class one.

Variants: swin_t (default; C 96, 2-2-6-2 blocks), swin_b (C 128, 2-2-18-2); cpu: a
2-stage TPS at CPU scale on the built-in data, trained from scratch.
Recipe (MartinXM/TPS configs/recognition/tps/swin_tiny_2D_patch244_tps_k400_1k.py): AdamW lr
1e-3 with the backbone at x0.1, weight decay 0.02 (none on norms, biases and the relative
position tables), cosine over 30 epochs after 2.5 warm-up epochs, batch 64 (8 per GPU x 8),
drop path 0.1, Inception-style crops and flips. Test views: 4 clips x 3 crops, short side 224.
"""

from vidtx import configuration

VARIANTS = ("swin_t", "swin_b", "cpu")


def get_config(arg=None):
  arg = arg or "swin_t"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name, c.model.attention = "tps", "patch_shift"
  c.model.size = arg
  c.model.patch_size, c.model.tps.window_size = (2, 4, 4), 7
  c.model.drop_path, c.model.head_dropout = 0.1, 0.5
  c.optim.weight_decay = 0.02
  c.optim.lr_scales = (("^backbone/", 0.1),)  # the ImageNet-initialised backbone
  if arg == "cpu":
    configuration.cpu_scale(c)
    # 4 x 8 x 8 tokens in 4 x 4 windows, then one 4 x 4 window; C 48 with 3 heads of 16.
    c.model.size, c.model.width, c.model.num_heads = "swin_t", 48, 3
    c.model.tps.stage_depths, c.model.tps.window_size, c.model.patch_size = (2, 2), 4, (2, 4, 4)
    c.optim.lr_scales = ()  # from scratch: no pre-trained backbone to protect
    c.total_steps = 4000
    c.optim.lr, c.optim.warmup_steps = 2e-3, 200
    return c
  configuration.use_dataset(c, "kinetics400")
  c.data.num_frames, c.data.frame_stride = 32, 2
  c.data.train_crop = "random_resized"  # mmaction's RandomResizedCrop: area 0.08-1, ratio 3/4-4/3
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 4, 3, 224
  c.batch_size = 64
  c.eval_batch_size = 16  # videos, each with 12 views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 30 * steps_per_epoch
  c.optim.lr, c.optim.warmup_steps = 1e-3, int(2.5 * steps_per_epoch)
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch // 4
  return c
