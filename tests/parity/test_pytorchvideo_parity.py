"""pytorchvideo 0.1.5's video networks against ours, through their converters
(vidtx.weights.pytorchvideo).

Each reference model gets random weights and random BatchNorm running statistics, is saved as a
.pth and converted by vidtx.tools.convert_weights (every key used, every parameter and statistic
filled); then, on the same clips, our model gives its logits in evaluation, and in training mode
its logits (batch statistics) and the running averages PyTorch's train mode leaves. Full widths
at small clips; the references' dropout is off (random in training mode).

Sections: shared helpers; ResNets (the resnet3d family: Slow R50 and I3D R50, and a 2-D
torchvision ResNet-50 inflated into them); SlowFast (the slowfast family).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
hub = pytest.importorskip("pytorchvideo.models.hub")
nn = torch.nn

from vidtx import checkpoint, configuration, models, weights  # noqa: E402
from vidtx.tools import convert_weights  # noqa: E402
from torch_params import randomise, randomise_batchnorm  # noqa: E402

BATCH, CLASSES = 2, 5


# --- Shared helpers -----------------------------------------------------------------------------

def reference(model, seed=0):
  """`model` (a torch module) with random weights and BatchNorm statistics, in eval mode."""
  return randomise_batchnorm(randomise(model, seed), seed)


def config(family, size, frames, crop, num_classes=CLASSES, **fields):
  c = configuration.base()
  c.model.name, c.model.size = family, size
  c.data.num_frames, c.data.crop_size, c.data.min_resize = frames, crop, crop
  c.data.num_classes = num_classes
  c.update_from_flattened_dict(fields)
  return c


def save(torch_model, tmp_path, name="reference"):
  """Path of `torch_model`'s state dict saved as a .pth in tmp_path."""
  path = os.path.join(tmp_path, f"{name}.pth")
  torch.save(torch_model.state_dict(), path)
  return path


def ours(c, torch_model, tmp_path):
  """Our model of config `c`, converted by convert_weights from `torch_model`'s .pth."""
  params = convert_weights.convert(c, save(torch_model, tmp_path),
                                   os.path.join(tmp_path, "converted"))
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def clips(frames, crop, seed=0, batch=BATCH):
  """The same clips for both: torch's [B, C, T, H, W] and ours [B, T, H, W, C]."""
  video = np.random.default_rng(seed).standard_normal((batch, 3, frames, crop, crop))
  video = video.astype(np.float32)
  return torch.from_numpy(video), jnp.asarray(video.transpose(0, 2, 3, 4, 1))


def flat(tree) -> dict:
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def statistics(c, torch_model, model) -> dict:
  """{our path: array} of the running averages in `torch_model`, through the converter into
  `model` (config `c`'s, real or abstract)."""
  converted = flat(weights.convert(torch_model.state_dict(), model,
                                   models.family(c.model).converters))
  return {k: v for k, v in converted.items() if k.endswith(("/mean", "/var"))}


def assert_close(what, got, expected, tol=1e-4):
  scale = np.abs(expected).max()
  print(f"{what}: max |diff| = {np.abs(got - expected).max():.1e}, max |ref| = {scale:.2f}")
  assert scale > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(scale, 1.0))


def check_eval_and_train(c, torch_model, model, torch_video, video, name):
  """Eval logits; then train-mode logits and the running averages after one forward."""
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(model, video))
  assert_close(f"{name} eval", logits, expected)
  before = statistics(c, torch_model, model)
  torch_model.train()
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=True)[0])(model, video))
  assert_close(f"{name} train", logits, expected)
  expected = statistics(c, torch_model, model)
  got = flat(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  assert got.keys() == expected.keys() == before.keys()
  for key in got:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert not np.array_equal(expected[key], before[key]), key  # the forward moved them


# --- ResNets: Slow and I3D (resnet3d) -----------------------------------------------------------

# Our size -> the hub builder and its head's (T, H, W) pool at 8 frames of 64x64 (a final map of
# 8x2x2, I3D's 4x2x2 after its time pool): the hub's (8, 7, 7) / (4, 7, 7) need 224^2, where
# they cover the whole map, as our head's window (config.data's final map) does.
RESNETS = {"slow_r50": (hub.slow_r50, (8, 2, 2)), "i3d_r50": (hub.i3d_r50, (4, 2, 2))}
FRAMES, CROP = 8, 64


@pytest.mark.parametrize("size", sorted(RESNETS))
def test_resnet_logits_and_running_statistics_match_pytorchvideo(size, tmp_path):
  make, pool = RESNETS[size]
  torch_model = make(pretrained=False, model_num_class=CLASSES, dropout_rate=0.0)
  torch_model.blocks[-1].pool = nn.AvgPool3d(pool, stride=1)
  torch_model = reference(torch_model)
  c = config("resnet3d", size, FRAMES, CROP)
  model = ours(c, torch_model, tmp_path)
  check_eval_and_train(c, torch_model, model, *clips(FRAMES, CROP), size)


def eval_logits(model, video):
  return np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(model, video))


def check_larger_crop(torch_model, model, frames, crop, name, make_global):
  """Eval logits on clips of `crop`^2, larger than the training crop whose final map is the
  references' head pool window: both average the window's positions (pytorchvideo: pool at
  stride 1, project each position, average the logits). The reference after `make_global()`
  (which sets its head to pool the whole map) gives other logits (a corner window's pixels
  weigh less), which ours must not match."""
  torch_video, video = clips(frames, crop, seed=3)
  with torch.no_grad():
    expected = torch_model(torch_video).numpy()
  logits = eval_logits(model, video)
  assert_close(f"{name} eval at {crop}^2", logits, expected)
  make_global()
  with torch.no_grad():
    global_average = torch_model(torch_video).numpy()
  print(f"{name} against a global average at {crop}^2: max |diff| = "
        f"{np.abs(logits - global_average).max():.1e}")
  assert np.abs(logits - global_average).max() > 10 * 1e-4 * max(np.abs(expected).max(), 1)


def test_i3d_at_a_test_crop_larger_than_training_averages_windows_as_pytorchvideo(tmp_path):
  """Trained at 8 frames of 64^2 (the head's window: the 4x2x2 map after I3D's time pool),
  evaluated on 96^2 (a 4x3x3 map, 2x2 window positions). A narrow I3D (stem width 8): the head
  is what differs from the test above."""
  make, pool = RESNETS["i3d_r50"]
  torch_model = make(pretrained=False, model_num_class=CLASSES, dropout_rate=0.0,
                     stem_dim_out=8)
  torch_model.blocks[-1].pool = nn.AvgPool3d(pool, stride=1)
  torch_model = reference(torch_model, seed=3)
  c = config("resnet3d", "i3d_r50", FRAMES, CROP, **{
      "model.resnet3d.stage_widths": (8, 16, 32, 64)})
  model = ours(c, torch_model, tmp_path)
  assert model.head_window == pool
  check_larger_crop(torch_model, model, FRAMES, 96, "i3d_r50", lambda: setattr(
      torch_model.blocks[-1], "pool", nn.AdaptiveAvgPool3d(1)))


# A residual block's modules, pytorchvideo's name -> PySlowFast's.
PYSLOWFAST_BLOCK = {f"branch2.{kind}_{x}": f"branch2.{x}{'' if kind == 'conv' else '_bn'}"
                    for kind in ("conv", "norm") for x in "abc"}
PYSLOWFAST_BLOCK.update({"branch1_conv": "branch1", "branch1_norm": "branch1_bn"})


def pyslowfast_names(state_dict):
  """A pytorchvideo I3D's state dict under PySlowFast's names, by the correspondence of
  vidtx.weights.pytorchvideo: blocks.0 -> s1.pathway0_stem (norm -> bn); the stages' blocks 1,
  3, 4, 5 (2 is the time pool) -> s2-s5 with res_blocks.<j> -> pathway0_res<j> (conv_a -> a,
  norm_a -> a_bn, ..., branch1_conv -> branch1, branch1_norm -> branch1_bn); blocks.6.proj ->
  head.projection."""
  stages = {"1": "s2", "3": "s3", "4": "s4", "5": "s5"}
  inner = PYSLOWFAST_BLOCK
  renamed = {}
  for key, value in state_dict.items():
    _, block, rest = key.split(".", 2)
    if block == "0":
      key = "s1.pathway0_stem." + rest.replace("norm.", "bn.")
    elif block == "6":
      key = "head.projection." + rest.removeprefix("proj.")
    else:
      _, j, module = rest.split(".", 2)  # res_blocks, j, e.g. branch2.conv_a.weight
      module, leaf = module.rsplit(".", 1)
      key = f"{stages[block]}.pathway0_res{j}.{inner[module]}.{leaf}"
    renamed[key] = value
  return renamed


def test_a_pyslowfast_i3d_pyth_converts_as_its_pytorchvideo_twin(tmp_path):
  """A narrow I3D (stem width 8) saved under PySlowFast's names in a .pyth ({"model_state":
  ...}) converts to exactly the parameters and statistics of its pytorchvideo state dict, whose
  logits the test above checks."""
  torch_model = reference(hub.i3d_r50(pretrained=False, model_num_class=CLASSES, stem_dim_out=8))
  state = pyslowfast_names(torch_model.state_dict())
  assert "s3.pathway0_res0.branch2.a_bn.running_var" in state and len(state) == len(
      torch_model.state_dict())
  path = os.path.join(tmp_path, "I3D_8x8_R50.pyth")
  torch.save({"model_state": state, "cur_epoch": 196}, path)
  c = config("resnet3d", "i3d_r50", FRAMES, CROP, **{
      "model.resnet3d.stage_widths": (8, 16, 32, 64)})
  got = flat(convert_weights.convert(c, path, os.path.join(tmp_path, "from_pyslowfast")))
  expected = flat(convert_weights.convert(c, save(torch_model, tmp_path),
                                          os.path.join(tmp_path, "from_pytorchvideo")))
  # The stem's conv and its norm's 4 arrays; 16 blocks of 3 convs and norms; 4 shortcuts; head.
  assert got.keys() == expected.keys() and len(got) == 5 + 16 * 15 + 4 * 5 + 2
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_the_resnet_converter_refuses_a_checkpoint_of_the_other_size(tmp_path):
  """Slow's weights into I3D: the temporal kernels (Slow's 1x1x1 conv_a in res2 against I3D's
  3x1x1) and the stage numbering (I3D's pool block) disagree, each named."""
  torch_model = hub.slow_r50(pretrained=False, model_num_class=CLASSES)
  c = config("resnet3d", "i3d_r50", FRAMES, CROP)
  with pytest.raises(ValueError, match=r"(?s)head/bias \(5,\): the checkpoint has no "
                     r"blocks.6.proj.bias.*stages/0/0/a/conv/kernel \(3, 1, 1, 64, 64\): "
                     r"checkpoint blocks.1.res_blocks.0.branch2.conv_a.weight has shape "
                     r"\(64, 64, 1, 1, 1\), the model needs \(64, 64, 3, 1, 1\)"
                     r".*checkpoint keys not used"):
    convert_weights.convert(c, save(torch_model, tmp_path), os.path.join(tmp_path, "out"))


@pytest.mark.parametrize("size", ["slow_r50", "i3d_r50"])
def test_a_torchvision_resnet50_inflated_centrally_gives_its_logits_on_a_still_clip(size,
                                                                                    tmp_path):
  """torchvision's 2-D ResNet-50 (random weights and BatchNorm statistics) converted into the
  one-frame image model and init_from'd into Slow / I3D with "central" inflation: each temporal
  kernel is the 2-D one at its centre tap and zero elsewhere, so every frame goes through the
  2-D network alone and a clip of one repeated frame gives the image's logits (I3D's time pool
  over equal frames changes nothing). "average" inflation is exact only away from the clip's
  ends, where the zero temporal padding takes its share of the kernel."""
  tv = pytest.importorskip("torchvision.models")
  torch_model = reference(tv.resnet50())
  frames, crop = 4, 64
  c = config("resnet3d", size, frames, crop, num_classes=1000, init_from_inflation="central")
  path = save(torch_model, tmp_path, "resnet50")
  image = convert_weights.convert(c, path, os.path.join(tmp_path, "image"))
  # The image model's kernels are one frame; the 1000-class fc is the head.
  assert flat(image)["stem/conv/kernel"].shape == (1, 7, 7, 3, 64)
  assert flat(image)["head/kernel"].shape == (2048, 1000)
  # The video model starts at zeros (a random start of 28M parameters takes a minute on one
  # core): every value must come from the image model.
  graphdef, state = nnx.split({"model": nnx.eval_shape(
      lambda: models.build(c.model, c.data, nnx.Rngs(0)))})
  state = jax.tree.map(lambda x: jnp.asarray(np.zeros(x.shape, x.dtype)), state)
  state = checkpoint.init_from(state, os.path.join(tmp_path, "image"), models.family(c.model),
                               None, "central")
  model = nnx.merge(graphdef, state)["model"]
  stem = np.asarray(model.stem.conv.kernel[...])
  t = stem.shape[0]
  assert t == (5 if size == "i3d_r50" else 1)
  np.testing.assert_array_equal(stem[t // 2], flat(image)["stem/conv/kernel"][0])
  assert not np.delete(stem, t // 2, axis=0).any()
  # BatchNorm statistics carry over too.
  np.testing.assert_array_equal(np.asarray(model.stem.norm.var[...]),
                                torch_model.bn1.running_var.numpy())
  frame = np.random.default_rng(1).standard_normal((1, 3, crop, crop)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(frame)).numpy()
  clip = jnp.asarray(np.repeat(frame.transpose(0, 2, 3, 1)[:, None], frames, axis=1))
  logits = np.asarray(nnx.jit(lambda m, v: m(v, train=False)[0])(model, clip))
  assert_close(f"{size} from resnet50", logits, expected)


def test_a_resnet50_image_checkpoint_is_refused_by_a_vit_family(tmp_path):
  tv = pytest.importorskip("torchvision.models")
  c = config("vit", "Ti", 4, 32)
  with pytest.raises(ValueError, match=r"model.name='vit' starts from HF image ViT or .* image "
                     r"checkpoints, not a torchvision/timm ResNet"):
    convert_weights.convert(c, save(tv.resnet18(), tmp_path), os.path.join(tmp_path, "out"))


# --- SlowFast (slowfast) ------------------------------------------------------------------------

slowfast_builders = pytest.importorskip("pytorchvideo.models.slowfast")

# Our size -> (the reference builder with its arguments, alpha): pytorchvideo's hub for 8x8 R50
# and R101_50_50; its create_slowfast with PySlowFast's SLOWFAST_4x16_R50 settings (alpha 8,
# fusion kernel 5) for 4x16.
SLOWFASTS = {
    "r50_8x8": (hub.slowfast_r50, 4),
    "r50_4x16": (lambda pretrained, **kw: slowfast_builders.create_slowfast(
        slowfast_fusion_conv_kernel_size=(5, 1, 1), slowfast_fusion_conv_stride=(8, 1, 1),
        **kw), 8),
    "r101_8x8": (hub.slowfast_16x8_r101_50_50, 4),
    "r101_101_101_8x8": (hub.slowfast_r101, 4),
}
SF_FRAMES, SF_CROP = 16, 64


class PackPathway(nn.Module):
  """A SlowFast reference fed one clip [B, C, T, H, W], which it cuts into [slow, fast] as
  PySlowFast's pack_pathway_output does; its state dict is the network's."""

  def __init__(self, net, alpha):
    super().__init__()
    self.net, self.alpha = net, alpha

  def forward(self, clip):
    t = clip.shape[2]
    slow = torch.index_select(clip, 2, torch.linspace(0, t - 1, t // self.alpha).long())
    return self.net([slow, clip])

  def state_dict(self, *args, **kwargs):
    return self.net.state_dict(*args, **kwargs)


def slowfast_reference(size, pool=True, **kwargs):
  """The reference of `size`, with `pool`: for our clips of SF_FRAMES x SF_CROP^2, its head
  pooling fixed windows set to the whole final maps (T / alpha and T frames of crop / 32
  squared), as the hub's windows are at their clip size."""
  make, alpha = SLOWFASTS[size]
  if pool:
    side = SF_CROP // 32
    kwargs["head_pool_kernel_sizes"] = ((SF_FRAMES // alpha, side, side),
                                        (SF_FRAMES, side, side))
  net = make(pretrained=False, model_num_class=CLASSES, dropout_rate=0.0, **kwargs)
  return PackPathway(reference(net), alpha)


@pytest.mark.parametrize("size", ["r50_8x8", "r50_4x16"])
def test_slowfast_logits_and_running_statistics_match_pytorchvideo(size, tmp_path):
  """Full widths on 16 frames of 64^2: Slow sees 4 (alpha 4) or 2 (alpha 8) of them, picked by
  PySlowFast's indices in the reference and inside our model."""
  torch_model = slowfast_reference(size)
  c = config("slowfast", size, SF_FRAMES, SF_CROP)
  model = ours(c, torch_model, tmp_path)
  check_eval_and_train(c, torch_model, model, *clips(SF_FRAMES, SF_CROP), size)


def test_slowfast_at_a_test_crop_larger_than_training_averages_windows_as_pytorchvideo(
    tmp_path):
  """Trained at 16 frames of 64^2 (the head's windows: Slow 4x2x2, Fast 16x2x2), evaluated on
  96^2 (maps of 3x3: 2x2 window positions in each pathway). A narrow SlowFast (Slow widths
  16-128, Fast 2-16): the head is what differs from the tests above."""
  torch_model = slowfast_reference("r50_8x8", stem_dim_outs=(16, 2))
  c = config("slowfast", "r50_8x8", SF_FRAMES, SF_CROP,
             **{"model.slowfast.stage_widths": (16, 32, 64, 128)})
  model = ours(c, torch_model, tmp_path)
  assert model.head_windows == ((SF_FRAMES // 4, 2, 2), (SF_FRAMES, 2, 2))
  pools = torch_model.net.blocks[5].pool  # one per pathway
  check_larger_crop(torch_model, model, SF_FRAMES, 96, "slowfast r50_8x8", lambda: setattr(
      torch_model.net.blocks[5], "pool", nn.ModuleList([nn.AdaptiveAvgPool3d(1)] * len(pools))))


def test_slowfast_r101_checkpoints_fill_their_size_exactly():
  """R101_50_50 (temporal kernels in res4's first 6 blocks) and R101_101_101 (all 23), both
  with fusion kernel 5: each checkpoint fills its size, every key used, every parameter and
  statistic in the shape the checkpoint has, and does not fit the other (its res4 kernels).
  Their forward is the R50's, tested above. (The references' own initialisation: no forward
  runs.)"""
  sizes = ("r101_8x8", "r101_101_101_8x8")
  sources = models.FAMILIES["slowfast"].converters
  abstract = {}
  for size in sizes:
    c = config("slowfast", size, SF_FRAMES, SF_CROP)
    abstract[size] = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  for size in sizes:
    state = SLOWFASTS[size][0](pretrained=False, model_num_class=CLASSES).state_dict()
    converted = flat(weights.convert(state, abstract[size], sources))
    assert len(converted) == len([k for k in state if not k.endswith("num_batches_tracked")])
    # Block 10 of res4: a temporal kernel in R101_101_101 only.
    kernel = converted["slow/stages/2/10/a/conv/kernel"]
    assert kernel.shape[0] == (3 if size == "r101_101_101_8x8" else 1)
    np.testing.assert_array_equal(
        kernel, state["blocks.3.multipathway_blocks.0.res_blocks.10.branch2.conv_a.weight"]
        .numpy().transpose(2, 3, 4, 1, 0))
    other = ({*sizes} - {size}).pop()
    with pytest.raises(ValueError, match=r"slow/stages/2/10/a/conv/kernel"):
      weights.convert(state, abstract[other], sources)


def pyslowfast_slowfast_names(state_dict):
  """A pytorchvideo SlowFast's state dict under PySlowFast's names: blocks.0's
  multipathway_blocks.<p> -> s1.pathway<p>_stem (norm -> bn); blocks.<k>.multipathway_fusion
  -> s<k + 1>_fuse (conv_fast_to_slow -> conv_f2s, norm -> bn); blocks.<k>
  .multipathway_blocks.<p>.res_blocks.<j> -> s<k + 1>.pathway<p>_res<j> (PYSLOWFAST_BLOCK's
  names); blocks.6.proj -> head.projection."""
  renamed = {}
  for key, value in state_dict.items():
    _, block, part, rest = key.split(".", 3)
    if part == "proj":
      key = f"head.projection.{rest}"
    elif part == "multipathway_fusion":
      module, leaf = rest.split(".")
      key = f"s{int(block) + 1}_fuse.{dict(conv_fast_to_slow='conv_f2s', norm='bn')[module]}.{leaf}"
    elif block == "0":
      p, module, leaf = rest.split(".")
      key = f"s1.pathway{p}_stem.{dict(conv='conv', norm='bn')[module]}.{leaf}"
    else:
      p, _, j, module = rest.split(".", 3)  # <p>, res_blocks, <j>, e.g. branch2.conv_a.weight
      module, leaf = module.rsplit(".", 1)
      key = f"s{int(block) + 1}.pathway{p}_res{j}.{PYSLOWFAST_BLOCK[module]}.{leaf}"
    renamed[key] = value
  return renamed


def test_a_pyslowfast_slowfast_pyth_converts_as_its_pytorchvideo_twin(tmp_path):
  """A narrow SlowFast 8x8 R50 (Slow widths 16-128, Fast 2-16) saved under PySlowFast's names
  in a .pyth converts to exactly the parameters and statistics of its pytorchvideo state
  dict, whose logits the tests above check."""
  torch_model = slowfast_reference("r50_8x8", stem_dim_outs=(16, 2))
  state = pyslowfast_slowfast_names(torch_model.state_dict())
  assert {"s1.pathway1_stem.bn.running_var", "s4_fuse.conv_f2s.weight",
          "s5.pathway1_res2.branch2.c_bn.weight", "head.projection.bias"} <= set(state)
  assert len(state) == len(torch_model.state_dict())
  path = os.path.join(tmp_path, "SLOWFAST_8x8_R50.pyth")
  torch.save({"model_state": state, "cur_epoch": 196}, path)
  c = config("slowfast", "r50_8x8", SF_FRAMES, SF_CROP,
             **{"model.slowfast.stage_widths": (16, 32, 64, 128)})
  got = flat(convert_weights.convert(c, path, os.path.join(tmp_path, "from_pyslowfast")))
  expected = flat(convert_weights.convert(c, save(torch_model, tmp_path),
                                          os.path.join(tmp_path, "from_pytorchvideo")))
  # Per pathway: the stem's conv and norm (5 arrays), 16 blocks of 3 convs and norms (15), 4
  # shortcuts (5); 4 fusions (5); the head (2).
  assert got.keys() == expected.keys() and len(got) == 2 * (5 + 16 * 15 + 4 * 5) + 4 * 5 + 2
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
