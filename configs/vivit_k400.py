"""ViViT on Kinetics-400 (SYSTEMS.md §6): ViT-B over 32 frames of 224^2 taken 2 apart, in
2x16x16 tubelets (16x14x14 tokens), after Scenic's kinetics400 configs.

  python -m vidtx.main --config=configs/vivit_k400.py[:model2|:model3|:model4|:large] \\
      --config.init_from=<ImageNet ViT converted for this model> --workdir=...

Variants: model1 (default; joint space-time attention, Scenic's vivit_base_k400); model2
(factorised encoder, 12 spatial + 4 temporal blocks, vivit_base_factorised_encoder); model3
(factorised self-attention); model4 (factorised dot-product attention); large: ViViT-L/16x2
factorised encoder, 24 spatial + 24 temporal blocks (vivit_large_factorised_encoder);
cpu: model 1 at CPU scale on the built-in data (--config.model.attention picks another).

Scenic trains with SGD + momentum (lr 0.1 for models 1 and FE-L, 0.05 for FE-B), cosine decay
after 2.5 warm-up epochs, 30 epochs, batch 64, gradient clipping at 1, no weight decay, no label
smoothing; its head starts at zero. vidtx's optimizer is AdamW, so its lr is ours (untuned);
the rest follows Scenic. Test views: 4 clips x 3 crops. Scenic starts the tubelet kernel from the
image model's patch kernel at the central frame (init_from surgery, not yet here).
"""

from vidtx import configuration

MODELS = {"model1": "joint", "model2": "factorised_encoder", "model3": "factorised_self",
          "model4": "factorised_dot", "large": "factorised_encoder", "cpu": "joint"}


def get_config(arg=None):
  arg = arg or "model1"
  if arg not in MODELS:
    raise ValueError(f"unknown variant {arg!r}: use one of {tuple(MODELS)}")
  c = configuration.base()
  c.model.name = "vivit"
  c.model.attention = MODELS[arg]
  c.model.head_init_scale = 0.0  # Scenic's zero-initialised output projection
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.vivit.temporal_depth = 2
    c.total_steps = 4000
    c.optim.lr, c.optim.warmup_steps = 2e-3, 200
    return c
  configuration.use_dataset(c, "kinetics400")
  c.data.num_frames, c.data.frame_stride = 32, 2
  c.data.eval_clips, c.data.eval_crops = 4, 3
  c.data.eval_resize = 0  # Scenic evaluates on min_resize (256) short sides
  large = arg == "large"
  c.model.size = "L" if large else "B"
  c.model.vivit.temporal_depth = 24 if large else 4
  c.model.patch_size = (2, 16, 16)
  c.batch_size = 64
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = 30 * steps_per_epoch
  c.optim.lr, c.optim.warmup_steps = 1e-4, int(2.5 * steps_per_epoch)
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
