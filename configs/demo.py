"""The embedded default: a small video ViT on the built-in synthetic motion data, on CPU.

  python -m vidtx.main --config=configs/demo.py --workdir=/tmp/vidtx_demo

Reaches >= 90% top-1 on the validation split in about 6 minutes on 2 CPU cores (BENCHMARKS.md).
"""

from vidtx import configuration


def get_config(arg=None):
  del arg  # no variants
  c = configuration.base()
  c.model.size = "Ti"
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 4
  # Tubelets spanning all 8 frames: 16 tokens, each seeing its patch's motion directly. The
  # cheapest tokenisation that learns the task; 2x8x8 (64 tokens) learns slower per step too.
  c.model.patch_size = (8, 8, 8)
  c.model.vit.pos_embed = "sincos"  # learned embeddings start near zero: order is found later
  c.data.num_frames = 8
  c.data.frame_stride = 2
  c.data.synthetic.num_train = 8192  # 4096 overfits before 90%
  c.batch_size = 32
  c.total_steps = 6000
  c.log_every_steps = 250
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 0.05
  return c
