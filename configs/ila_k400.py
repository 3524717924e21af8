"""ILA on Kinetics-400 (SYSTEMS.md §4): a frozen CLIP ViT-B/16 encodes 8 frames (one from each
of 8 segments) at 224^2, a trained ILA module before each of its blocks aligns adjacent frames.

  python -m vidtx.tools.convert_weights --config=configs/ila_k400.py[:variant] \\
      --checkpoint=<HF CLIP save_pretrained directory, e.g. openai/clip-vit-base-patch16> \\
      --out=<clip dir>
  python -m vidtx.main --config=configs/ila_k400.py[:variant] --config.init_from=<clip dir> \\
      --workdir=...

The first command fills the model's CLIP tower (`clip/...`); init_from copies it and starts the
ILA modules and the head fresh. Variants: b16 (default), l14 (8 frames at 224^2). 16-frame
runs: --config.data.num_frames=16; B/32: --config.model.patch_size=1,32,32; L/14@336: the l14
variant with --config.data.crop_size=336 --config.data.min_resize=384
--config.data.eval_resize=336.
cpu: a tiny ILA (nothing frozen) on the built-in data, on a CPU.

Recipe of the reference code (Francis-Rings/ILA, K400): AdamW (0.9, 0.98), cosine with 5
warm-up epochs over 50, batch 256 (64 per micro-batch x 4 accumulation steps), the CLIP tower
frozen. Learning rates: ILA modules 5e-4 (the base lr), the zero-initialised injections W_a,
W_i 8e-5 and the MIT + head 4e-4 (optim.lr_scales). Weight decay 1e-2, the ILA modules' value,
for all groups (the reference uses 1e-3 for W_a, W_i and 3e-3 for the MIT: optim.lr_scales
scales lr and decay together). Mixup 0.8, CutMix 1.0, label smoothing 0.1, random erasing 0.25,
no flips (the reference's flip ratio is 0). Its MultiScaleCrop (sides of {1, .875, .75, .66} x
the short side 256) is approximated by random_resized crops of 33-75% of the frame with aspect
ratio 0.85-1.18; its colour jitter (p 0.8: brightness and contrast 0.4, saturation 0.2, hue
0.1) by our always-on jitter of strength 0.4; its grayscale (p 0.2) is not done.
Test: 4 clips x 3 crops of the short side resized to 224.

Differences from the reference model: the K400 code classifies with CLIP text embeddings of
the class names and video-specific prompts; here the SSv2 branch's head (MIT, LN, dropout 0.5,
Linear) serves both datasets. delta (model.ila.jitter) stays 0.2 (the reference halves it
every epoch from epoch 30).
"""

from vidtx import configuration

VARIANTS = ("b16", "l14", "cpu")
# variant -> (size, patch, CLIP's projection width)
SIZES = {"b16": ("B", 16, 512), "l14": ("L", 14, 768)}


def get_config(arg=None):
  arg = arg or "b16"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name, c.model.attention = "ila", "space_only"
  c.model.ila.interaction = "separable"
  c.model.ila.head = "mit"
  c.model.ila.jitter, c.model.ila.loss_weight = 0.2, 1.0
  c.model.head_dropout = 0.5
  c.optim.b1, c.optim.b2 = 0.9, 0.98
  c.optim.weight_decay = 1e-2
  c.optim.lr = 5e-4  # the ILA modules'
  c.optim.lr_scales = (
      (r"^ila/\d+/(align_skip|interaction_skip)/", 8e-5 / 5e-4),  # W_a, W_i
      (r"^(mit|head_norm|head)/", 4e-4 / 5e-4),
  )
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.patch_size = (1, 8, 8)  # 4 x 4 patches per frame
    c.model.ila.proj_dim, c.model.ila.channels = 64, 64
    c.total_steps = 4000
    c.optim.lr, c.optim.warmup_steps = 1e-3, 200
    return c
  size, patch, proj = SIZES[arg]
  c.model.size, c.model.patch_size, c.model.ila.proj_dim = size, (1, patch, patch), proj
  c.optim.frozen = ("^clip/",)  # CLIP's embeddings, blocks, ln_post and projection
  configuration.use_dataset(c, "kinetics400")
  c.data.num_frames, c.data.crop_size = 8, 224
  c.data.sampler, c.data.frame_stride = "segment", 1
  c.data.min_resize, c.data.flip = 256, "none"
  c.data.train_crop, c.data.crop_scale, c.data.crop_ratio = "random_resized", (0.33, 0.75), (
      0.85, 1 / 0.85)
  c.data.color_jitter, c.data.random_erasing = 0.4, 0.25
  c.data.mixup_alpha, c.data.cutmix_alpha, c.data.mix_switch_prob = 0.8, 1.0, 0.5
  c.label_smoothing = 0.1
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 4, 3, 224
  c.batch_size, c.grad_accum_steps = 256, 4
  c.eval_batch_size = 32  # videos, each with 12 views
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 50 * steps_per_epoch
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.optim.min_lr = 8e-8  # the reference's lr / 100
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
