"""The embedded default: a small video ViT on the built-in synthetic motion data, on CPU.

  python -m vidtx.main --config=configs/demo.py --workdir=/tmp/vidtx_demo
"""

from vidtx import configuration


def get_config(arg=None):
  del arg  # no variants
  c = configuration.base()
  c.model.size = "Ti"
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.patch_size = (2, 8, 8)  # 8x32x32 clips -> 4x4x4 = 64 tokens
  c.model.pos_embed = "learned"
  c.data.num_frames = 8
  c.data.frame_stride = 2
  c.batch_size = 32
  c.total_steps = 1500
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 250
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.05
  return c
