"""TPS on Something-Something v2 (SYSTEMS.md §3): configs/tps_k400.py's model and optimizer on
32 frames sampled uniformly (one per segment), initialised from the Kinetics-400 run.

  python -m vidtx.main --config=configs/tps_ssv2.py[:swin_b] \\
      --config.init_from=<tps_k400 workdir of the same size> --workdir=...

init_from copies the backbone and starts a fresh 174-class head. Variants: swin_t (default),
swin_b. Recipe (MartinXM/TPS configs/recognition/tps/swin_tiny_2D_patch244_tps_sthv2_1k.py):
as K400 (AdamW lr 1e-3, backbone x0.1, weight decay 0.02, cosine over 30 epochs after 2.5
warm-up epochs, batch 64, drop path 0.1), plus augmentation (ours RandAugment m7 n4 for the
reference's imgaug "default"), random erasing 0.25, label smoothing 0.1 and flips that swap
the left/right classes. Test views: 1 clip x 3 crops, short side 224.
Variant `cpu`: configs/tps_k400.py:cpu with SSv2's sampling, flips, augmentation and label
smoothing, on the built-in data (init_from: a tps_k400.py:cpu run, or nothing).
"""

from vidtx import configuration

VARIANTS = ("swin_t", "swin_b", "cpu")


def get_config(arg=None):
  arg = arg or "swin_t"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.load(configuration.sibling(__file__, f"tps_k400.py:{arg}"))
  c.unlock()
  c.data.randaugment_layers, c.data.randaugment_magnitude = 4, 7.0
  c.data.random_erasing = 0.25
  c.label_smoothing = 0.1
  if arg == "cpu":  # the built-in data's 8 classes, 8 frames and eval views
    c.data.sampler, c.data.frame_stride, c.data.flip = "segment", 1, "swap_labels"
    return c
  configuration.use_dataset(c, "ssv2")  # segment sampling, swap_labels flips
  c.data.num_frames = 32
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 1, 3, 224
  c.eval_batch_size = 32
  steps_per_epoch = configuration.EPOCH_SIZES["ssv2"] // c.batch_size
  c.total_steps = 30 * steps_per_epoch
  c.optim.warmup_steps = int(2.5 * steps_per_epoch)
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch // 4
  return c
