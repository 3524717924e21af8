"""The starting point for your own videos: a few hundred of them, from scratch, on a CPU.

  # 1. my_videos/{train,validation}/<class>/<video> -> TFRecord shards of small frames (the
  #    model sees 32x32 crops: short side 64 leaves room for the crops and decodes fast)
  python -m vidtx.data.convert_videos --format=folders --video_root=my_videos \
      --output_dir=my_videos_tfrecords --short_side=64
  # 2. Train, then evaluate on the validation split; num_classes is the number of class
  #    folders (python -m vidtx.data.check prints them)
  python -m vidtx.main --config=configs/custom.py --config.data.data_dir=my_videos_tfrecords \
      --config.data.num_classes=6 --workdir=runs/mine

Both data flags are required: without data_dir the run stops saying where to point it, and a
num_classes that differs from the classes in <data_dir>/labels.json stops it with the count to
set. On 240 camera-motion videos of 6 classes (benchmarks/camera_motion_videos.py, 120 more to
validate) it reaches 98-99% validation top-1 in about 6 minutes on 2 CPU cores, where
configs/demo.py overfits at 87% (BENCHMARKS.md, "Your own videos").
"""

from vidtx import configuration


def get_config(arg=None):
  del arg  # no variants
  c = configuration.base()
  c.data.name = "custom"  # data_dir and num_classes come from the command line
  # The demo's ViT (4 blocks, width 96, tubelets spanning all 8 frames: 16 tokens of 32x32).
  c.model.size = "Ti"
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.patch_size = (8, 8, 8)
  c.model.vit.pos_embed = "sincos"
  c.model.drop_path = 0.1
  # The 8 frames spread over the whole video (one per segment, at a random place in it when
  # training), whatever its length and frame rate: a short window of dense frames shows too
  # little motion, and the model learns the scenes instead.
  c.data.num_frames = 8
  c.data.sampler = "segment"
  # Augmentation that keeps any label: boxes of 30-100% of the frame at any aspect ratio in
  # 3:4-4:3, and colour jitter. No flips (a flip turns "pan left" into "pan right"; for your
  # classes we cannot know which labels it swaps), no time reversal.
  c.data.train_crop = "random_resized"
  c.data.crop_scale = (0.3, 1.0)
  c.data.color_jitter = 0.4
  c.label_smoothing = 0.1
  c.batch_size = 32
  c.total_steps = 6000  # 800 epochs of 240 videos; 3000 steps gave 94%, 6000 99%
  c.log_every_steps = 250
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 0.05
  return c
