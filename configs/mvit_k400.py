"""MViT (v1) on Kinetics-400 (../shared/systems/conv_and_mvit.md): MViT-B, 16 multiscale
blocks (stages of 1, 2, 11, 2 blocks at widths 96 -> 768, heads 1 -> 8) on a 3x7x7 patch
convolution, separable position embeddings, pooling attention with conv-pooled q, k, v, after
torchvision's `mvit_v1_b`, pytorchvideo's `mvit_base_16x4` / `mvit_base_32x3` and PySlowFast's
configs/Kinetics/MVIT_B_16x4_CONV.yaml.

  python -m vidtx.main --config=configs/mvit_k400.py[:b_16x4|:b_32x3|:cpu] --workdir=...

Variants: b_16x4 (default; 16 frames 4 apart: 36.6M parameters, 70.6 GMACs per 224^2 view);
b_32x3 (32 frames 3 apart: 170 GMACs; drop path 0.3 as PySlowFast's 32x3); cpu: MViT-B's
blocks at CPU scale on the built-in data (`cpu`). The paper's MViT-S (26.1M parameters, 32.9
GMACs) is not here. Its Table 3(c) gives a 3x8x8 patch conv of stride 2x8x8 to 128 channels
and stages of 7 blocks at 256 and 6 at 512 channels, but the first stage's block count and the
key/value pooling are unreadable or unstated in the copies at hand, and PySlowFast, pytorchvideo
and torchvision have no MViT-S. Of the readings, 3/7/6 blocks with conv pooling gives 26.0M
parameters and 30.2 GMACs (8% under); only a guessed 4/7/6 with max pooling fits both numbers.

The recipe (PySlowFast's, conv_and_mvit.md): AdamW, lr 1.6e-4 per 64 clips (scaled linearly),
weight decay 0.05 (not on biases, norms and position tables), cosine over 200 epochs after 30
warm-up epochs, from and to 1e-6, gradient clipping at 1, drop path 0.2, dropout 0.5 before
the head, mixup 0.8 / cutmix 1.0, RandAugment m7 n4, random erasing 0.25, label smoothing 0.1,
2 clips per video (repeated augmentation), Inception-style crops. Test: 5 clips x 1 centre
crop at 224.
"""

from vidtx import configuration

VARIANTS = ("b_16x4", "b_32x3", "cpu")
LR_PER_64_CLIPS = 1.6e-4


def recipe(c, arg: str, *, frames: int, stride: int, drop_path: float) -> None:
  """PySlowFast's Kinetics recipe for MViT and MViTv2 (mvitv2_k400.py and mvitv2_ssv2.py
  start from it); c.model.size set first."""
  c.model.name = "mvit"
  c.model.patch_size = (2, 4, 4)
  c.model.drop_path = drop_path
  c.model.head_dropout = 0.5
  c.label_smoothing = 0.1
  c.optim.weight_decay = 0.05
  c.optim.grad_clip = 1.0
  c.optim.warmup_init_lr, c.optim.min_lr = 1e-6, 1e-6
  if arg == "cpu":
    cpu(c)
    return
  configuration.use_dataset(c, "kinetics400")
  c.data.update(configuration.FINETUNE_AUGMENTATION)
  c.data.num_frames, c.data.frame_stride = frames, stride
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 5, 1, 224
  videos = 32  # each giving data.repeated_aug = 2 clips: 64 clips per step
  c.batch_size = videos * c.data.repeated_aug
  c.eval_batch_size = 32
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // videos
  c.total_steps = 200 * steps_per_epoch
  c.optim.lr = LR_PER_64_CLIPS * c.batch_size / 64
  c.optim.warmup_steps = 30 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 10 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch


def cpu(c) -> None:
  """The size's blocks at CPU scale on the built-in synthetic data, without the augmentation:
  8 frames of 32x32 in 2x4x4 patches (4x8x8 tokens), width 32, 4 blocks with a second stage
  from block 2, keys and values pooled 1x4x4 (then 1x2x2); no dropout."""
  size = c.model.size
  configuration.cpu_scale(c)
  c.model.size, c.model.patch_size = size, (2, 4, 4)
  c.model.width, c.model.depth, c.model.num_heads = 32, 4, 1
  c.model.mvit.stages = (2,)
  c.model.mvit.kv_stride = (1, 4, 4)
  c.model.head_dropout = 0.0
  c.total_steps = 2000
  c.optim.lr, c.optim.warmup_steps = 1e-3, 100


def get_config(arg=None):
  arg = arg or "b_16x4"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.size = "v1_b"
  frames, stride = (32, 3) if arg == "b_32x3" else (16, 4)
  recipe(c, arg, frames=frames, stride=stride, drop_path=0.3 if arg == "b_32x3" else 0.2)
  return c
