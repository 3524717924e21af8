"""A plain 3-D CNN with BatchNorm (vidtx.models.cnn3d) on the built-in synthetic motion data,
on a CPU, from scratch.

  python -m vidtx.main --config=configs/cnn3d_synthetic.py --workdir=/tmp/cnn3d

The smallest convolutional family: the check that BatchNorm's running statistics train,
checkpoint and evaluate end to end.
"""

from vidtx import configuration


def get_config(arg=None):
  del arg  # no variants
  c = configuration.base()
  c.model.name, c.model.size = "cnn3d", "tiny"
  # The stem strides 4 in space (8x8 positions per frame after it): XLA:CPU computes the
  # gradients of strided convolutions slowly, and at stride 2 a step takes 4x as long.
  c.model.cnn3d.stem_kernel, c.model.cnn3d.stem_stride = (3, 5, 5), (1, 4, 4)
  c.data.num_frames, c.data.frame_stride = 8, 2
  c.data.synthetic.num_train = 8192
  c.batch_size = 32
  c.total_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 1000
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.05
  return c
