"""One record -> training clips or evaluation views, composing the per-clip transforms of
vidtx.data.transforms (pure TF, usable inside tf.data maps).

`train_example`: sample the frames, decode only those, augment them `repeated_aug` times.
`eval_example`: the eval_clips x eval_crops views. Every random choice is a stateless TF op seeded
from the clip's key, so a clip is a function of (record, key); vidtx.data.pipeline derives the
keys from (seed, process_index, epoch, index).
"""

import tensorflow as tf

from vidtx.data import tfds_datasets, transforms

fold_in = tf.random.experimental.stateless_fold_in


def sample_frames(data_config, num_available, key=None, num_clips=1):
  """Frame indices by config.data.sampler: train [T] with a key, else eval [num_clips, T]."""
  cfg = data_config
  if cfg.sampler == "segment":
    return transforms.segment_indices(num_available, cfg.num_frames, key, num_clips)
  return transforms.dense_indices(num_available, cfg.num_frames, cfg.frame_stride, key,
                                  num_clips)


# fold_in index of each augmentation under a clip's key, so each draws independently.
_AUGMENTATIONS = ("crop", "resize", "flip", "randaugment", "color_jitter")


def augment(data_config, frames, label, key, flip_table=None):
  """Host train augmentation of decoded frames [T, H, W, 3] -> (uint8 [T, S, S, 3], label).

  Order: crop (and resize), flip, RandAugment and colour jitter (with config.data.host_augment;
  else on the device), rounding to uint8. Normalising and random erasing follow on the device
  (vidtx.data.on_device.train_clips). The label changes only when flip="swap_labels" mirrors a
  left/right class.
  """
  cfg = data_config
  sub = lambda name: fold_in(key, _AUGMENTATIONS.index(name))
  if cfg.train_crop == "random_resized":
    x = transforms.random_resized_crop(frames, cfg.crop_size, sub("crop"), cfg.crop_scale,
                                       cfg.crop_ratio)
  else:
    short = cfg.min_resize
    if cfg.max_resize:  # scale jitter
      short = tf.random.stateless_uniform([], sub("resize"), cfg.min_resize, cfg.max_resize + 1,
                                          dtype=tf.int32, alg="philox")
    x = transforms.random_crop(transforms.resize_short_side(frames, short), cfg.crop_size,
                               sub("crop"))
  if cfg.flip != "none":
    x, label = transforms.random_flip(x, label, sub("flip"), flip_table)
  if cfg.host_augment and cfg.randaugment_layers:
    x = transforms.randaugment(x, sub("randaugment"), cfg.randaugment_layers,
                               cfg.randaugment_magnitude)
  if cfg.host_augment and cfg.color_jitter:
    x = transforms.color_jitter(x, sub("color_jitter"), cfg.color_jitter)
  return transforms.to_uint8(x), label


def train_example(data_config, serialized, key, flip_table=None):
  """One record -> `repeated_aug` augmented clips (video uint8 [k, T, S, S, 3], label [k]).

  The frames are sampled (key fold_in 0) and decoded once; copy j augments them with its own
  key (fold_in 1, then j), as VideoMAE's num_sample does. Only the sampled frames are decoded.
  `flip_table` (transforms.flip_table) is needed for flip="swap_labels".
  """
  cfg = data_config
  encoded, label = tfds_datasets.record_parser(cfg)(serialized)
  indices = sample_frames(cfg, tf.shape(encoded)[0], key=fold_in(key, 0))
  frames = transforms.decode_frames(tf.gather(encoded, indices))
  frames.set_shape([cfg.num_frames, None, None, 3])
  copies = [augment(cfg, frames, label, fold_in(fold_in(key, 1), j), flip_table)
            for j in range(cfg.repeated_aug)]
  return tf.stack([video for video, _ in copies]), tf.stack([label for _, label in copies])


def num_views(data_config):
  """Evaluation views per video: eval_clips x eval_crops."""
  return data_config.eval_clips * data_config.eval_crops


def centre_view(data_config):
  """Index of the single-view reference among the views: the middle clip (the earlier of the
  two middle ones for an even eval_clips), centre crop; for an odd eval_clips it equals the
  eval_clips=1, eval_crops=1 view."""
  cfg = data_config
  return (cfg.eval_clips - 1) // 2 * cfg.eval_crops + (cfg.eval_crops - 1) // 2


def eval_example(data_config, serialized):
  """One record -> (video uint8 [V, T, S, S, 3], label), V = num_views; normalised on the
  device (vidtx.data.on_device.eval_clips).

  Views are clip-major: view k * eval_crops + c is clip k (sample_frames) and spatial crop c
  (transforms.spatial_crops) of the frames resized to short side eval_resize (0: min_resize).
  Frames shared by several clips are decoded once.
  """
  encoded, label = tfds_datasets.record_parser(data_config)(serialized)
  return eval_views(data_config, encoded), label


def eval_crop_size(data_config) -> int:
  """The side of the eval crops: data.eval_crop_size, or the train crop's."""
  return data_config.eval_crop_size or data_config.crop_size


def eval_views(data_config, encoded):
  """The views of `eval_example` of encoded frames [n] string (JPEG or PNG)."""
  cfg = data_config
  indices = sample_frames(cfg, tf.shape(encoded)[0], num_clips=cfg.eval_clips)
  unique, position = tf.unique(tf.reshape(indices, [-1]))
  frames = tf.gather(transforms.decode_frames(tf.gather(encoded, unique)), position)
  frames = transforms.resize_short_side(frames, cfg.eval_resize or cfg.min_resize)
  shape = tf.shape(frames)
  clips = tf.reshape(frames, [cfg.eval_clips, cfg.num_frames, shape[1], shape[2], 3])
  size = eval_crop_size(cfg)
  views = transforms.spatial_crops(clips, size, cfg.eval_crops)  # [C, K, T, S, S, 3]
  views = tf.reshape(tf.transpose(views, [1, 0, 2, 3, 4, 5]),
                     [num_views(cfg), cfg.num_frames, size, size, 3])
  return transforms.to_uint8(views)
