"""VideoMAE pre-training on Kinetics-400 (SYSTEMS.md §2): tube masking at 90%, a light decoder
reconstructing each masked tubelet's normalised pixels, MSE on the masked tubelets only.

  python -m vidtx.main --config=configs/videomae_pretrain_k400.py[:S|B|L|H] --workdir=...
  python -m vidtx.main --config=configs/videomae_pretrain_k400.py:cpu --workdir=...

Variants: S, B (default), L, H; `cpu`: a small model on the built-in data, minutes on a
CPU (BENCHMARKS.md). The workdir then initialises MAR or a plain fine-tune via `init_from`.
"""

from vidtx import configuration
from vidtx.models import mae

# Global batch per size: 32 clips x 64 GPUs for S/B, 8 x 64 for L/H (VideoMAE's scripts).
BATCH = {"S": 2048, "B": 2048, "L": 512, "H": 512}
EPOCHS = 1600  # the checkpoint MAR fine-tunes from; 800 is VideoMAE's shorter schedule


def get_config(arg=None):
  arg = arg or "B"
  if arg not in (*BATCH, "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use one of {[*BATCH, 'cpu']}")
  c = configuration.base()
  c.model.name = "mae"
  c.model.mae.classifier = "none"
  c.model.masking, c.model.mask_ratio = "tube", 0.9
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.95, 0.05
  if arg == "cpu":
    configuration.cpu_scale(c)
    c.model.mae.update(mae.CPU_SIZES)
    # 90% of a 4x4 slice leaves 2 tokens; 75% leaves 4, enough to learn motion from.
    c.model.mask_ratio = 0.75
    c.total_steps = 3000
    c.optim.lr, c.optim.warmup_steps, c.optim.min_lr = 1.5e-3, 200, 1e-5
    return c
  configuration.use_dataset(c, "kinetics400")
  # VideoMAE pre-trains without flips; only the reconstruction of one view is evaluated.
  c.data.flip = "none"
  c.data.eval_clips, c.data.eval_crops = 1, 1
  c.model.size = arg
  c.batch_size = BATCH[arg]
  steps_per_epoch = configuration.EPOCH_SIZES["kinetics400"] // c.batch_size
  c.total_steps = EPOCHS * steps_per_epoch
  # lr and min lr scale with batch/256; 40 warm-up epochs, then cosine.
  c.optim.lr = 1.5e-4 * c.batch_size / 256
  c.optim.min_lr = 1e-5 * c.batch_size / 256
  c.optim.warmup_steps = 40 * steps_per_epoch
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 2 * steps_per_epoch
  return c
