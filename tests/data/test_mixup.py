"""Tests of batch Mixup / CutMix with label smoothing. Each setting is compiled once and run
for many seeds at a time (vmap)."""

import jax
import jax.numpy as jnp
import numpy as np

from vidtx.data import mixup

B, T, H, W, C, CLASSES = 5, 2, 12, 16, 3, 7
LABELS = np.array([0, 3, 6, 1, 2])
SMOOTHING = 0.1
SEEDS = 16


def constant_video():
  """Clip i is filled with the value i + 1: every pixel tells which clip it came from."""
  return np.broadcast_to(np.arange(1.0, B + 1, dtype=np.float32)[:, None, None, None, None],
                         (B, T, H, W, C))


def smooth(labels):
  out = np.full((len(labels), CLASSES), SMOOTHING / CLASSES)
  out[np.arange(len(labels)), labels] += 1 - SMOOTHING
  return out


def run(**kwargs):
  """(video [SEEDS, B, T, H, W, C], targets [SEEDS, B, CLASSES]) for seeds 0..SEEDS-1."""
  args = dict(num_classes=CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5,
              label_smoothing=SMOOTHING)
  args.update(kwargs)
  fn = jax.jit(jax.vmap(lambda key: mixup.mix(key, jnp.asarray(constant_video()),
                                              jnp.asarray(LABELS), **args)))
  video, targets = fn(jax.random.split(jax.random.key(0), SEEDS))
  return np.asarray(video), np.asarray(targets)


def mixup_weight(video):
  """lam of a Mixup result: clip 0 = lam * 1 + (1 - lam) * B."""
  return (B - video[0, 0, 0, 0, 0]) / (B - 1)


def check_mixup(video, targets):
  lam = mixup_weight(video)
  x = constant_video()
  np.testing.assert_allclose(video, lam * x + (1 - lam) * x[::-1], rtol=1e-5)
  np.testing.assert_allclose(targets, lam * smooth(LABELS) + (1 - lam) * smooth(LABELS[::-1]),
                             rtol=1e-5, atol=1e-6)
  return lam


def check_cutmix(video, targets):
  """The pasted pixels form one box, the same on every clip, frame and channel, holding the
  mirrored clip's values; the label weights are exactly the box's area."""
  x = constant_video()
  pasted = video != x
  box = pasted[0, 0, :, :, 0]
  for i in [0, 1, 3, 4]:  # the middle clip pairs with itself: nothing visible changes
    assert (pasted[i] == box[None, :, :, None]).all()
    np.testing.assert_array_equal(video[i][pasted[i]], B - i)
  if box.any():
    rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
    assert box.sum() == len(rows) * len(cols)
  lam = 1 - box.sum() / (H * W)
  np.testing.assert_allclose(targets, lam * smooth(LABELS) + (1 - lam) * smooth(LABELS[::-1]),
                             rtol=1e-5, atol=1e-6)
  return box.mean()


def test_no_mixing_gives_smoothed_one_hots():
  video, targets = run()
  np.testing.assert_array_equal(video, np.broadcast_to(constant_video(), video.shape))
  np.testing.assert_allclose(targets, np.broadcast_to(smooth(LABELS), targets.shape), rtol=1e-6)


def test_mixup_is_the_convex_combination_with_the_flipped_batch():
  videos, targets = run(mixup_alpha=0.8)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  lams = [check_mixup(v, t) for v, t in zip(videos, targets)]
  assert 0 < min(lams) and max(lams) < 1 and np.ptp(lams) > 0.2


def test_cutmix_box_area_matches_the_label_weight_exactly():
  videos, targets = run(cutmix_alpha=1.0)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  areas = [check_cutmix(v, t) for v, t in zip(videos, targets)]
  assert max(areas) > 0.3 and len(set(areas)) > 5


def test_both_switch_between_cutmix_and_mixup():
  videos, targets = run(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  kinds = []
  for v, t in zip(videos, targets):
    whole_pixels = set(np.unique(v)) <= set(range(1, B + 1))  # only pixels moved: CutMix
    (check_cutmix if whole_pixels else check_mixup)(v, t)
    kinds.append(whole_pixels)
  assert 3 <= sum(kinds) <= SEEDS - 3
