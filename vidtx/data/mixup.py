"""Mixup and CutMix with label smoothing, on device inside the jitted train step.

One mixing weight per batch (timm's "batch" mode): every clip is mixed with the clip at the
mirrored batch position (clip i with clip B-1-i), as timm and VideoMAE do.
"""

import jax
import jax.numpy as jnp


def smooth_targets(labels, num_classes, label_smoothing):
  """One-hot targets with `label_smoothing` spread evenly over all classes (rows sum to 1)."""
  off = label_smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing) + off


def cutmix_box(key, height, width, lam):
  """A box covering about 1 - lam of a height x width frame: sides sqrt(1 - lam) of the frame's
  (rounded down), centred at a uniform pixel and clipped at the borders. Returns a bool
  [height, width] mask of the box."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def mix(key, video, labels, *, num_classes, mixup_alpha, cutmix_alpha, switch_prob,
        label_smoothing):
  """Mixes a batch; returns (video, soft targets [B, num_classes], each row summing to 1).

  video [B, T, H, W, C], labels int [B]. With both alphas > 0, CutMix with probability
  `switch_prob`, else Mixup; with one > 0, that one; with neither, the video is unchanged and
  the targets are the smoothed one-hots.
  - Mixup: lam ~ Beta(mixup_alpha, mixup_alpha); video = lam x + (1 - lam) x[::-1].
  - CutMix: lam ~ Beta(cutmix_alpha, cutmix_alpha) sizes a box (`cutmix_box`, the same on every
    frame) pasted from x[::-1]; lam then becomes the exact fraction of pixels outside the box.
  targets = lam smooth(labels) + (1 - lam) smooth(labels[::-1]).
  """
  targets = smooth_targets(labels, num_classes, label_smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return video, targets
  key_switch, key_mixup, key_cutmix, key_box = jax.random.split(key, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  other = video[::-1]

  lam_mixup = jax.random.beta(key_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
  lam_cutmix = (jax.random.beta(key_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0
                else 1.0)
  height, width = video.shape[2], video.shape[3]
  box = cutmix_box(key_box, height, width, lam_cutmix)
  lam_box = 1.0 - jnp.sum(box) / (height * width)

  lam = jnp.where(use_cutmix, lam_box, lam_mixup).astype(jnp.float32)
  mixed = jnp.where(
      use_cutmix,
      jnp.where(box[None, None, :, :, None], other, video),
      (lam * video + (1.0 - lam) * other).astype(video.dtype))
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]
