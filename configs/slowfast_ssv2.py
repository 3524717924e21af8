"""SlowFast 16x8 R50 (vidtx.models.slowfast) on Something-Something v2 (PySlowFast's
configs/SSv2/SLOWFAST_16x8_R50.yaml): the r50_8x8 network (alpha 4) on 64 frames by segment
sampling (16 Slow ones), fine-tuned from Kinetics-400, 174 classes.

  python -m vidtx.main --config=configs/slowfast_ssv2.py[:cpu] \\
      --config.init_from=<a configs/slowfast_k400.py run, or pytorchvideo's
      SLOWFAST_8x8_R50.pyth converted by vidtx.tools.convert_weights> --workdir=...

The Kinetics head (400 classes) is replaced by a new one for 174 (init_from's surgery).
PySlowFast starts from its Caffe2 SLOWFAST_8x8_R50.pkl and so feeds BGR frames
(REVERSE_INPUT_CHANNEL); vidtx feeds RGB, as pytorchvideo's .pyth weights and our own runs take.
Recipe: SGD momentum 0.9 (Nesterov), lr 0.03 per 16 clips, x0.1 from epoch 14 and x0.01 from 18
of 22, after 0.19 linear warm-up epochs from 1e-4, weight decay 1e-6, dropout 0.5, BatchNorm
statistics over groups of 8 clips (BN.NUM_SYNC_DEVICES 4 x 2 clips per GPU) and precise BN over
200 batches; 224^2 crops after short-side jitter 256-320; flips that swap the left/right labels
(as vidtx's other SSv2 configs; PySlowFast does not flip, RANDOM_FLIP False). Test: 1 clip x 1
crop of 256 from the short side 256.
Variants: none (default), cpu: configs/slowfast_k400.py's cpu variant (model and AdamW recipe)
on the built-in data with SSv2's sampling and flips, from scratch.
"""

from vidtx import configuration

# configs/slowfast_k400.py, whose cpu variant the cpu variant here trains on SSv2's sampling.
K400 = configuration.sibling(__file__, "slowfast_k400.py")


def get_config(arg=None):
  if arg not in (None, "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use none or 'cpu'")
  c = configuration.base()
  c.model.name, c.model.size = "slowfast", "r50_8x8"
  c.model.slowfast.zero_init_final_norm = True  # PySlowFast's; init_from overwrites them
  if arg == "cpu":
    c = configuration.load_module(K400).get_config("cpu")  # its model and recipe
    c.data.sampler, c.data.frame_stride, c.data.flip = "segment", 1, "swap_labels"
    return c
  c.model.head_dropout = 0.5
  c.optim.name, c.optim.momentum, c.optim.nesterov = "sgd", 0.9, True
  configuration.use_dataset(c, "ssv2")  # segment sampling, label-swapping flips
  c.data.num_frames = 64
  c.data.min_resize, c.data.max_resize, c.data.crop_size = 256, 320, 224
  c.data.eval_clips, c.data.eval_crops, c.data.eval_resize = 1, 1, 256
  c.data.eval_crop_size = 256
  c.batch_size, c.eval_batch_size = 16, 16
  c.model.bn.group_size = 8
  c.model.bn.precise_batches = 200
  steps_per_epoch = configuration.EPOCH_SIZES["ssv2"] // c.batch_size
  c.total_steps = 22 * steps_per_epoch
  c.optim.lr_drops = ((14 / 22, 0.1), (18 / 22, 0.01))
  c.optim.lr, c.optim.warmup_init_lr = 0.03, 1e-4
  c.optim.warmup_steps = round(0.19 * steps_per_epoch)
  c.optim.weight_decay = 1e-6
  c.log_every_steps = 100
  c.eval_every_steps = 2 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
