"""pytorchvideo's X3D against ours (the x3d family).

The reference is `pytorchvideo.models.x3d.create_x3d` as its hub's x3d_xs calls it (X3D-XS,
S and M are one network; X3D-L differs in depth alone, which tests/models/test_x3d.py checks
by its parameter count), built for the test clips (4 frames of 64x64), so that its head's
fixed pooling window covers the whole 4x2x2 map as ours does, and with `head_activation=None`:
pytorchvideo's head ends in a softmax at evaluation, our model returns the logits before it.
Each reference gets random weights and random BatchNorm statistics, is saved as a .pth and
converted by vidtx.tools.convert_weights (every key used, every parameter and statistic
filled); then on the same clips our model gives its logits in evaluation, and in training mode
its logits (batch statistics) and the running averages PyTorch's train mode leaves. Dropout is
off in both (the reference's dropout_rate=0).

PySlowFast's .pyth layout (vidtx.weights.x3d.PYSLOWFAST) is checked on the same reference,
its state dict renamed key by key to PySlowFast's names (`PYSLOWFAST_NAMES`, read off
slowfast/models/video_model_builder.py, resnet_helper.py, stem_helper.py, head_helper.py and
operators.py's SE), with the BatchNorm that PySlowFast has after the first block's shortcut conv
added as an identity.
"""

import re

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pv_x3d = pytest.importorskip("pytorchvideo.models.x3d")
nn = torch.nn

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.tools import convert_weights  # noqa: E402
from torch_params import randomise, randomise_batchnorm  # noqa: E402

BATCH, CLASSES, FRAMES, CROP = 2, 5, 4, 64


def reference(seed=0):
  """pytorchvideo's X3D with random weights and BatchNorm statistics (scales around 1, random
  running means and positive variances), in eval mode."""
  model = pv_x3d.create_x3d(input_clip_length=FRAMES, input_crop_size=CROP,
                            model_num_class=CLASSES, dropout_rate=0.0,
                            head_activation=None)
  return randomise_batchnorm(randomise(model, seed), seed).eval()


def our_config(**fields):
  c = configuration.base()
  c.model.name, c.model.size = "x3d", "xs"
  c.data.num_frames, c.data.crop_size, c.data.min_resize = FRAMES, CROP, CROP
  c.data.num_classes = CLASSES
  c.update_from_flattened_dict(fields)
  return c


@functools.cache
def abstract_model(shortcut_norm="width"):
  """Our model's shapes (built once per setting: a build is most of these tests' time)."""
  config = our_config(**{"model.x3d.shortcut_norm": shortcut_norm})
  return nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))


def ours(torch_model, abstract, tmp_path):
  """Our model, converted by convert_weights from `torch_model`'s state dict saved as a .pth."""
  path = os.path.join(tmp_path, "x3d_xs.pth")
  torch.save(torch_model.state_dict(), path)
  params = convert_weights.convert(our_config(), path, os.path.join(tmp_path, "converted"))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def flat(tree) -> dict:
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def statistics(torch_model, abstract) -> dict:
  """{our path: array} of the running averages in `torch_model`, through the converter."""
  converted = flat(weights.convert(torch_model.state_dict(), abstract,
                                   models.FAMILIES["x3d"].converters))
  return {k: v for k, v in converted.items() if k.endswith(("/mean", "/var"))}


def assert_close(what, got, expected, tol=1e-4):
  scale = np.abs(expected).max()
  print(f"{what}: max |diff| = {np.abs(got - expected).max():.1e}, max |ref| = {scale:.2f}")
  assert scale > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(scale, 1.0))


def eval_logits(torch_model, model, crop=CROP, seed=1):
  """(ours, the reference's) evaluation logits on random clips of `crop`^2."""
  video = np.random.default_rng(seed).standard_normal((BATCH, 3, FRAMES, crop, crop))
  video = video.astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(video)).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(
      model, jnp.asarray(video.transpose(0, 2, 3, 4, 1))))
  return logits, expected


def test_x3d_xs_logits_and_running_statistics_match_pytorchvideo(tmp_path):
  torch_model = reference()
  abstract = abstract_model()
  model = ours(torch_model, abstract, tmp_path)
  video = np.random.default_rng(0).standard_normal((BATCH, 3, FRAMES, CROP, CROP))
  video = video.astype(np.float32)
  torch_video, video = torch.from_numpy(video), jnp.asarray(video.transpose(0, 2, 3, 4, 1))
  # Evaluation: the running statistics.
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(model, video))
  assert_close("eval", logits, expected)
  # Training mode: the batch's statistics, and one update of the running averages.
  before = statistics(torch_model, abstract)
  torch_model.train()
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=True)[0])(model, video))
  assert_close("train", logits, expected)
  expected, got = statistics(torch_model, abstract), flat(
      nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  assert got.keys() == expected.keys() == before.keys()
  for key in got:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    # The batch's mean and unbiased variance they moved towards (momentum 0.1).
    np.testing.assert_allclose((got[key] - before[key]) / 0.1, (expected[key] - before[key]) / 0.1,
                               rtol=2e-3, atol=2e-3, err_msg=key)


# pytorchvideo key -> PySlowFast key (in order; the first match renames).
PYSLOWFAST_NAMES = [
    (r"^blocks\.0\.conv\.conv_t\.", "s1.pathway0_stem.conv_xy."),
    (r"^blocks\.0\.conv\.conv_xy\.", "s1.pathway0_stem.conv."),
    (r"^blocks\.0\.norm\.", "s1.pathway0_stem.bn."),
    (r"^blocks\.5\.pool\.pre_conv\.", "head.conv_5."),
    (r"^blocks\.5\.pool\.pre_norm\.", "head.conv_5_bn."),
    (r"^blocks\.5\.pool\.post_conv\.", "head.lin_5."),
    (r"^blocks\.5\.proj\.", "head.projection."),
]
PYSLOWFAST_BLOCK_NAMES = {
    "branch1_conv": "branch1", "branch1_norm": "branch1_bn", "branch2.conv_a": "branch2.a",
    "branch2.norm_a": "branch2.a_bn", "branch2.conv_b": "branch2.b",
    "branch2.norm_b.0": "branch2.b_bn", "branch2.norm_b.1.block.0": "branch2.se.fc1",
    "branch2.norm_b.1.block.2": "branch2.se.fc2", "branch2.conv_c": "branch2.c",
    "branch2.norm_c": "branch2.c_bn",
}


def pyslowfast_state_dict(torch_model) -> dict:
  """`torch_model`'s state dict in PySlowFast's X3D names, with an identity BatchNorm after the
  first block's shortcut conv (PySlowFast has one there, pytorchvideo none)."""
  out = {}
  for key, value in torch_model.state_dict().items():
    block = re.match(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.(.*)\.(\w+)$", key)
    if block:
      stage, j, module, leaf = block.groups()
      new = f"s{int(stage) + 1}.pathway0_res{j}.{PYSLOWFAST_BLOCK_NAMES[module]}.{leaf}"
    else:
      pattern, name = next((p, n) for p, n in PYSLOWFAST_NAMES if re.match(p, key))
      new = re.sub(pattern, name, key)
    out[new] = value.numpy()
  width = out["s2.pathway0_res0.branch1.weight"].shape[0]
  eps = 1e-5  # running variance 1 - eps: the BatchNorm is exactly the identity
  out.update({"s2.pathway0_res0.branch1_bn.weight": np.ones(width, np.float32),
              "s2.pathway0_res0.branch1_bn.bias": np.zeros(width, np.float32),
              "s2.pathway0_res0.branch1_bn.running_mean": np.zeros(width, np.float32),
              "s2.pathway0_res0.branch1_bn.running_var": np.full(width, 1 - eps, np.float32)})
  return out


def test_pyslowfast_layout_converts_into_the_model_with_every_shortcut_normalised():
  torch_model = reference(seed=1)
  state_dict = pyslowfast_state_dict(torch_model)
  abstract = abstract_model("always")
  converters = models.FAMILIES["x3d"].converters
  assert weights.find_source(state_dict, converters).name == "PySlowFast X3D"
  params = weights.convert(state_dict, abstract, converters)
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  model = nnx.merge(graphdef, state)
  assert_close("PySlowFast layout eval", *eval_logits(torch_model, model))
  # The model pytorchvideo's layout fits has no BatchNorm there: the conversion says which
  # setting does.
  with pytest.raises(ValueError, match=r"(?s)s2\.pathway0_res0\.branch1_bn.*"
                     r"model\.x3d\.shortcut_norm='always'"):
    weights.convert(state_dict, abstract_model(), converters)


def test_x3d_at_a_test_crop_larger_than_training_pools_windows_as_pytorchvideo(tmp_path):
  """Trained at 64^2 (the head's window: the 4x2x2 final map), evaluated on 96^2 (a 4x3x3 map,
  2x2 window positions): the reference's head pools its training window at stride 1, runs its
  1x1x1 conv and ReLU (lin_5) and the Linear at each position and averages the logits; so does
  ours. The reference with a global average there instead gives logits far from these: the
  ReLU after the pool does not commute with the average."""
  torch_model = reference(seed=2)
  projected_pool = torch_model.blocks[-1].pool
  assert tuple(projected_pool.pool.kernel_size) == (FRAMES, 2, 2)
  model = ours(torch_model, abstract_model(), tmp_path)
  assert model.head.window == (FRAMES, 2, 2)
  logits, expected = eval_logits(torch_model, model, crop=96, seed=2)
  assert_close("eval at 96^2", logits, expected)
  projected_pool.pool = nn.AdaptiveAvgPool3d(1)
  _, global_average = eval_logits(torch_model, model, crop=96, seed=2)
  print(f"against a global average at 96^2: max |diff| = "
        f"{np.abs(logits - global_average).max():.1e}")
  assert np.abs(logits - global_average).max() > 100 * 1e-4 * max(np.abs(expected).max(), 1)
