"""TimeSformer on Kinetics-400 (SYSTEMS.md §6): ViT-B/16 over 8 frames of 224^2 taken 32 apart
(8x32), divided space-time attention, the CLS token's logits.

  python -m vidtx.main --config=configs/timesformer_k400.py[:joint|:space_only|:hr|:large] \\
      --config.init_from=<ImageNet ViT-B/16 converted for this model> --workdir=...

Variants: divided (default); joint and space_only (the paper's other attentions, 8x224);
hr: TimeSformer-HR, 16 frames 16 apart at 448^2; large: TimeSformer-L, 96 frames 4 apart at
224^2; cpu: divided attention at CPU scale on the built-in data.

The reference trains with SGD (lr 0.005, momentum 0.9, weight decay 1e-4, lr x0.1 at epochs 11
and 14 of 15, batch 8); vidtx's optimizer is AdamW with a cosine schedule, so the optimizer
settings below are ours (untuned), over the same 15 epochs and batch. No weight decay on the
position/time embeddings or CLS (as the reference). Test views: 1 clip x 3 crops.
"""

from vidtx import configuration

VARIANTS = ("divided", "joint", "space_only", "hr", "large", "cpu")


def get_config(arg=None):
  arg = arg or "divided"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "timesformer"
  c.model.attention = arg if arg in ("joint", "space_only") else "divided"
  c.model.patch_size = (1, 16, 16)  # 2-D patches per frame
  c.model.drop_path = 0.1
  c.optim.weight_decay = 1e-4
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.patch_size = (1, 8, 8)
    c.total_steps = 4000
    c.optim.lr, c.optim.warmup_steps = 2e-3, 200
    return c
  configuration.use_dataset(c, "kinetics400")
  c.model.size = "B"
  frames, stride, crop = {"hr": (16, 16, 448), "large": (96, 4, 224)}.get(arg, (8, 32, 224))
  c.data.num_frames, c.data.frame_stride, c.data.crop_size = frames, stride, crop
  c.data.min_resize = crop * 256 // 224  # short side 256 for 224 crops, 512 for 448
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 1, 3, crop  # short side = crop
  c.batch_size = 8
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 15 * steps_per_epoch
  c.optim.lr, c.optim.warmup_steps = 1e-4 * c.batch_size / 64, steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch // 4
  return c
