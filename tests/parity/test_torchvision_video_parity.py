"""torchvision's video CNNs against ours: r2plus1d_18, r3d_18, mc3_18 (the r2plus1d family) and
s3d (the s3d family), plus S3D-G.

Each torchvision model gets random weights and random BatchNorm running statistics, is saved as
a .pth and converted by vidtx.tools.convert_weights (every key used, every parameter and
statistic filled); then, on the same clips, our model gives its logits in evaluation, and in
training mode its logits (batch statistics) and the running averages PyTorch's train mode
leaves. Full widths at small clips: 8 frames of 48x48 (ResNets), 16 of 64x64 (S3D, whose
average pool then shrinks to the 2x2x2 map; torchvision's 2x7x7 needs 224, so the reference
gets the same shrunk nn.AvgPool3d).

S3D-G: torchvision's S3D with self-gating added as antoine77340/S3D_HowTo100M's s3dg.py
(revision b8cd0bbfd16fe41629d1b15e0cf384d75f56101a) defines it: `SelfGating` (mean over T, H, W
-> Linear -> sigmoid -> channel scale) on each of the four branch outputs of every Inception
block (`InceptionBlock.forward`, gating_b0..b3) and once after conv_2c (`S3D.gating`, 192
channels). The rest of that file's network (a non-separable 3x7x7 first conv, TF "SAME" max
pools, an fc head) is not S3D-G's gating and not torchvision's layout, so it is not copied.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision.models.video")
tv_s3d = pytest.importorskip("torchvision.models.video.s3d")  # the module, not the function
nn = torch.nn

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.tools import convert_weights  # noqa: E402
from torch_params import randomise, randomise_batchnorm  # noqa: E402

BATCH, CLASSES = 2, 5



class SelfGating(nn.Module):
  """s3dg.py's SelfGating."""

  def __init__(self, dim):
    super().__init__()
    self.fc = nn.Linear(dim, dim)

  def forward(self, x):
    return torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))[:, :, None, None, None] * x


class GatedInception(nn.Module):
  """torchvision's SepInceptionBlock3D `block` with s3dg.py's InceptionBlock gating: each branch's
  output scaled by its own SelfGating (gating_b0..b3) before the concatenation."""

  def __init__(self, block):
    super().__init__()
    self.branch0, self.branch1 = block.branch0, block.branch1
    self.branch2, self.branch3 = block.branch2, block.branch3
    for b in range(4):
      convs = [m for m in getattr(self, f"branch{b}").modules() if isinstance(m, nn.Conv3d)]
      setattr(self, f"gating_b{b}", SelfGating(convs[-1].out_channels))

  def forward(self, x):
    return torch.cat([getattr(self, f"gating_b{b}")(getattr(self, f"branch{b}")(x))
                      for b in range(4)], dim=1)


class GatedS3D(tv.S3D):
  """S3D-G: torchvision's S3D, gated after conv_2c (features.3) and in every Inception block."""

  def __init__(self, **kw):
    super().__init__(**kw)
    self.gating = SelfGating(192)
    for k, m in enumerate(self.features):
      if isinstance(m, tv_s3d.SepInceptionBlock3D):
        self.features[k] = GatedInception(m)

  def forward(self, x):
    x = self.gating(self.features[:4](x))
    x = self.avgpool(self.features[4:](x))
    return self.classifier(x).mean(dim=(2, 3, 4))


# name -> (the torchvision model, our family and size, frames, crop)
MODELS = {
    "r2plus1d_18": (tv.r2plus1d_18, "r2plus1d", "r2plus1d_18", 8, 48),
    "r3d_18": (tv.r3d_18, "r2plus1d", "r3d_18", 8, 48),
    "mc3_18": (tv.mc3_18, "r2plus1d", "mc3_18", 8, 48),
    "s3d": (tv.s3d, "s3d", "s3d", 16, 64),
    "s3d_g": (GatedS3D, "s3d", "s3d", 16, 64),
}


def reference(name, seed=0):
  make, family, *_ = MODELS[name]
  model = make(num_classes=CLASSES, **({"dropout": 0.0} if family == "s3d" else {}))
  if family == "s3d":  # its 2x7x7 pool, shrunk to the 2x2x2 map of these clips (as ours does)
    model.avgpool = nn.AvgPool3d((2, 2, 2), stride=1)
  return randomise_batchnorm(randomise(model, seed), seed)


def our_config(name):
  _, family, size, frames, crop = MODELS[name]
  c = configuration.base()
  c.model.name, c.model.size = family, size
  if name == "s3d_g":
    c.model.s3d.gating = True
  c.data.num_frames, c.data.crop_size, c.data.min_resize = frames, crop, crop
  c.data.num_classes = CLASSES
  return c


def ours(name, torch_model, tmp_path):
  """Our model, converted by convert_weights from `torch_model`'s state dict saved as a .pth."""
  config = our_config(name)
  path = os.path.join(tmp_path, f"{name}.pth")
  torch.save(torch_model.state_dict(), path)
  params = convert_weights.convert(config, path, os.path.join(tmp_path, "converted"))
  model = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def clips(name, seed=0):
  """The same clips for both: torch's [B, C, T, H, W] and ours [B, T, H, W, C]."""
  *_, frames, crop = MODELS[name]
  video = np.random.default_rng(seed).standard_normal((BATCH, 3, frames, crop, crop))
  video = video.astype(np.float32)
  return torch.from_numpy(video), jnp.asarray(video.transpose(0, 2, 3, 4, 1))


def flat(tree) -> dict:
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def statistics(name, torch_model) -> dict:
  """{our path: array} of the running averages in `torch_model`, through the converter."""
  config = our_config(name)
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  converted = flat(weights.convert(torch_model.state_dict(), abstract,
                                   models.family(config.model).converters))
  return {k: v for k, v in converted.items() if k.endswith(("/mean", "/var"))}


def assert_close(what, got, expected, tol=1e-4):
  scale = np.abs(expected).max()
  print(f"{what}: max |diff| = {np.abs(got - expected).max():.1e}, max |ref| = {scale:.2f}")
  assert scale > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(scale, 1.0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_and_running_statistics_match_torchvision(name, tmp_path):
  torch_model = reference(name)
  model = ours(name, torch_model, tmp_path)
  torch_video, video = clips(name)
  # Evaluation: the running statistics.
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(model, video))
  assert_close(f"{name} eval", logits, expected)
  # Training mode: the batch's statistics, and one update of the running averages.
  before = statistics(name, torch_model)
  torch_model.train()
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=True)[0])(model, video))
  # Normalising by batch statistics of few values (S3D's last maps: 2 clips x 2x2x2) through
  # 50+ BatchNorms grows rounding: S3D's torch float32 logits are 2e-4 off its float64 ones.
  assert_close(f"{name} train", logits, expected, tol=1e-3 if name.startswith("s3d") else 1e-4)
  expected, ours_stats = statistics(name, torch_model), flat(
      nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  assert ours_stats.keys() == expected.keys() == before.keys()
  momentum = next(m.momentum for m in torch_model.modules() if isinstance(m, nn.BatchNorm3d))
  for key in ours_stats:
    np.testing.assert_allclose(ours_stats[key], expected[key], rtol=1e-4, atol=1e-4,
                               err_msg=key)
    # The batch's mean and unbiased variance they moved towards (S3D's momentum is 0.001, so
    # the averages alone would hardly tell).
    np.testing.assert_allclose((ours_stats[key] - before[key]) / momentum,
                               (expected[key] - before[key]) / momentum, rtol=2e-3, atol=2e-3,
                               err_msg=key)
