"""VTN on Kinetics-400 (SYSTEMS.md §5): ViT-B/16 per frame, a 3-layer Longformer over 16 frames
taken 8 apart, after PySlowFast's configs/Kinetics/VIT_B_VTN.yaml (ViT-B-VTN).

  python -m vidtx.tools.convert_weights --config=configs/vtn_k400.py \\
      --checkpoint=<HF ViT-B/16, e.g. google/vit-base-patch16-224> --out=<dir>
  python -m vidtx.main --config=configs/vtn_k400.py --config.init_from=<dir> --workdir=<run>
  python -m vidtx.main --config=configs/vtn_k400.py:whole_video --workdir=<run> --mode=eval

Variants: default (training, evaluated on one 16x8 clip); whole_video: the reference's test,
every frame of a video in one view (250 frames at stride 1, the centre 224 crop of the short
side resized to 224), from the same checkpoint (VTN takes any number of frames); cpu: the
same architecture at CPU scale on the built-in data.

The recipe: SGD (momentum 0.9, Nesterov, weight decay 1e-4, PySlowFast's defaults) at lr 1e-3,
25 epochs, batch 16, scale jitter 256-320, crop 224, random flips. The reference steps the lr
x0.1 at epoch 13 and x0.01 at epoch 24; ours decays it on a cosine from 1e-3 without warm-up
(a similar mean lr). The reference decays every parameter but BatchNorm's; ours skips biases,
norms, position tables and CLS tokens. The ViT backbone starts from ImageNet (timm's
vit_base_patch16_224); the Longformer and head start fresh.
"""

from vidtx import configuration

VARIANTS = ("default", "whole_video", "cpu")


def get_config(arg=None):
  arg = arg or "default"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name, c.model.attention = "vtn", "space_only"
  c.model.patch_size = (1, 16, 16)
  c.model.vtn.temporal_depth = 3  # Longformer layers, width 768, 12 heads, FFN 3072
  c.model.vtn.window = 9  # HF attention_window=18: 9 frames on each side
  c.model.vtn.dropout = 0.1
  c.model.head_dropout = 0.5
  c.optim.name, c.optim.momentum, c.optim.nesterov = "sgd", 0.9, True
  c.optim.weight_decay = 1e-4
  if arg == "cpu":
    configuration.cpu_scale(c)  # 8 frames 2 apart of 32^2, width 96, 4 blocks, 4 heads
    c.model.patch_size = (1, 8, 8)
    c.model.vtn.temporal_depth, c.model.vtn.window = 2, 2
    # From scratch on CPU: AdamW, as the other cpu variants (SGD suits a pre-trained ViT).
    c.optim.name, c.optim.weight_decay = "adamw", 0.05
    c.total_steps = 4000
    c.optim.lr, c.optim.warmup_steps = 1e-3, 200
    return c
  configuration.use_dataset(c, "kinetics400")
  c.model.size = "B"
  c.data.num_frames, c.data.frame_stride = 16, 8
  c.data.min_resize, c.data.max_resize, c.data.crop_size = 256, 320, 224
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 1, 1, 224
  c.batch_size = 16
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 25 * steps_per_epoch
  c.optim.lr, c.optim.warmup_steps = 1e-3, 0
  c.optim.lr_drops = ((13 / 25, 0.1), (24 / 25, 0.01))  # x0.1 at epoch 13, x0.01 at 24
  c.log_every_steps = 100
  c.eval_every_steps = steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch // 4
  if arg == "whole_video":
    # Kinetics clips are 10 s at 25 fps; shorter videos loop (the dense sampler).
    c.data.num_frames, c.data.frame_stride = 250, 1
    c.eval_batch_size = 8  # 250 frames each through ViT-B
  return c
