"""MViT and MViTv2 against torchvision's `MViT` (`torchvision.models.video.mvit`), the
reference implementation of `mvit_v1_b` and `mvit_v2_s`.

Each torchvision model gets random weights (`torch_params.randomise`), is converted into ours
through `vidtx.weights.mvit` (so the converter is tested too) and must give the same logits in
eval mode. Small models are built from torchvision's own `MViT` class with a block list in its
format (`MSBlockConfig`), written out here as torchvision writes mvit_v1_b's and mvit_v2_s's;
the full-size models run once at 16x224. Parameter counts and GMACs per view (the flops tool)
are held to the numbers torchvision publishes for its weights (`_ops`, `num_params`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
tv_mvit = pytest.importorskip("torchvision.models.video.mvit")

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers  # noqa: E402
from vidtx.tools import flops  # noqa: E402
from vidtx.weights import mvit as mvit_weights  # noqa: E402
from torch_params import randomise  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = 5

# Three blocks of width 32: a stage starts at blocks 1 and 2 (heads and channels double,
# queries pooled 1x2x2), keys and values pooled 1x4x4, then 1x2x2, then 1x1x1 (kernel 3 only).
TINY_BLOCKS = {
    1: dict(num_heads=[1, 2, 4], input_channels=[32, 64, 128], output_channels=[64, 128, 128],
            kernel_q=[[], [3, 3, 3], [3, 3, 3]], stride_q=[[], [1, 2, 2], [1, 2, 2]]),
    2: dict(num_heads=[1, 2, 4], input_channels=[32, 32, 64], output_channels=[32, 64, 128],
            kernel_q=[[3, 3, 3]] * 3, stride_q=[[1, 1, 1], [1, 2, 2], [1, 2, 2]]),
}
TINY_KV = dict(kernel_kv=[[3, 3, 3]] * 3, stride_kv=[[1, 4, 4], [1, 2, 2], [1, 1, 1]])


def tiny_torchvision(version, frames, size, seed=0):
  blocks = {**TINY_BLOCKS[version], **TINY_KV}
  setting = [tv_mvit.MSBlockConfig(**{k: v[i] for k, v in blocks.items()}) for i in range(3)]
  v2 = version == 2
  model = tv_mvit.MViT(spatial_size=(size, size), temporal_size=frames, block_setting=setting,
                       residual_pool=v2, residual_with_cls_embed=False, rel_pos_embed=v2,
                       proj_after_attn=v2, num_classes=CLASSES)
  return randomise(model, seed)


def our_config(size_name, frames, crop, **fields):
  c = configuration.base()
  c.model.name, c.model.size = "mvit", size_name
  c.model.patch_size = (2, 4, 4)
  c.data.num_frames, c.data.crop_size, c.data.num_classes = frames, crop, CLASSES
  c.data.min_resize = max(c.data.min_resize, crop)
  c.update_from_flattened_dict(fields)
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def tiny_config(version, frames, crop):
  return our_config("v1_b" if version == 1 else "v2_s", frames, crop, **{
      "model.width": 32, "model.depth": 3, "model.num_heads": 1, "model.mvit.stages": (1, 2),
      "model.mvit.kv_stride": (1, 4, 4)})


def converted(config, torch_model):
  """Our model, with the torchvision model's weights converted into it."""
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  params = weights.convert(state_dict, abstract, mvit_weights.SOURCES)
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state), params


def logits_of(model, video):
  return np.asarray(nnx.jit(lambda model, video: model(video)[0])(model, video))


def compare(config, torch_model, batch, seed=0):
  """Max |ours - torchvision| / max |torchvision| of the logits of a random clip; asserts 1e-4."""
  d = config.data
  clip = np.random.default_rng(seed).standard_normal(
      (batch, 3, d.num_frames, d.crop_size, d.crop_size)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(clip)).numpy()
  model, _ = converted(config, torch_model)
  logits = logits_of(model, jnp.asarray(clip.transpose(0, 2, 3, 4, 1)))
  scale = np.abs(expected).max()
  assert scale > 0.1  # not vanishing, so the tolerance means something
  diff = np.abs(logits - expected).max() / scale
  print(f"max |diff| / max |ref| = {diff:.1e}")
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * scale)
  return diff


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("frames, crop", [(4, 32), (6, 36)])
def test_tiny_models_match_torchvision(version, frames, crop):
  """At 36^2 the grids go 9 -> 5 -> 3, where torchvision sizes its tables for 9 // 2 = 4:
  v2's relative positions (over 2 max(5, 5) - 1 offsets, not 7) are then resized linearly,
  and ours must be too; 6 frames give 3 token frames."""
  torch_model = tiny_torchvision(version, frames, crop)
  config = tiny_config(version, frames, crop)
  model, _ = converted(config, torch_model)
  assert layers.count_params(nnx.state(model, nnx.Param)) == sum(
      p.numel() for p in torch_model.parameters())
  resized = [i for i, block in enumerate(model.blocks) if version == 2 and
             block.attn.rel_pos_h.shape[0] != 2 * max(block.attn.q_grid[1],
                                                      block.attn.k_grid[1]) - 1]
  assert resized == ([1, 2] if (version, crop) == (2, 36) else [])
  compare(config, torch_model, batch=2)


def test_converter_refuses_a_checkpoint_of_another_structure():
  """torchvision's v1 weights into a v2 config: every key and parameter that does not fit is
  named (here v2's relative position tables, missing from v1's checkpoint)."""
  torch_model = tiny_torchvision(1, 4, 32)
  abstract = nnx.eval_shape(lambda: models.build(
      tiny_config(2, 4, 32).model, tiny_config(2, 4, 32).data, nnx.Rngs(0)))
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  with pytest.raises(ValueError, match=r"(?s)cannot convert this torchvision MViT checkpoint.*"
                                       r"blocks/0/attn/rel_pos_t.*the checkpoint has no "
                                       r"blocks\.0\.attn\.rel_pos_t"):
    weights.convert(state_dict, abstract, mvit_weights.SOURCES)


FULL = {  # torchvision builder, our config, parameters and GMACs per 16x224 view (tv's meta)
    "mvit_v1_b": ("mvit_k400.py:b_16x4", 36_610_672, 70.599),
    "mvit_v2_s": ("mvitv2_k400.py:s", 34_537_744, 64.224),
}


# conv_and_mvit.md's other rows: pytorchvideo's mvit_base_32x3 (parameters and GMACs counted
# from its code) and MViTv2-B 32x3 (the paper's 51.2M and 225 GMACs).
COUNTS = [(spec, params, 0, gmacs) for spec, params, gmacs in FULL.values()] + [
    ("mvit_k400.py:b_32x3", 36_611_440, 0, 169.96),
    ("mvitv2_k400.py:b", 51.2e6, 0.05e6, 225),
]


@pytest.mark.parametrize("spec, params, params_tolerance, gmacs", COUNTS)
def test_full_size_counts_match_the_references(spec, params, params_tolerance, gmacs):
  """The flops tool also counts the element-wise work (norms, softmax, residuals) that the
  references' counts (matmuls and convolutions) leave out: 0.7-1.0% over them here."""
  counted = flops.count(configuration.load(f"{ROOT}/configs/{spec}"))
  print(f"{spec}: {counted['params']:,} parameters, {counted['gmacs']:.2f} GMACs")
  assert abs(counted["params"] - params) <= params_tolerance
  assert counted["gmacs"] == pytest.approx(gmacs, rel=0.03)


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_logits_match_torchvision(name):
  torch_model = randomise(getattr(tv_mvit, name)(num_classes=CLASSES))
  config = configuration.load(f"{ROOT}/configs/{FULL[name][0]}")
  config.unlock()
  config.data.num_classes = CLASSES
  compare(config, torch_model, batch=1)


# ---- PySlowFast's checkpoint layout ----

# torchvision's MViT names -> PySlowFast's (slowfast/models/video_model_builder.py MViT,
# attention.py MultiScaleAttention / MultiScaleBlock, common.Mlp, head_helper's
# TransformerBasicHead); the position tables and the CLS token get PySlowFast's leading axes.
PYSLOWFAST_NAMES = [
    ("conv_proj.", "patch_embed.proj."), ("pos_encoding.class_token", "cls_token"),
    ("pos_encoding.spatial_pos", "pos_embed_spatial"),
    ("pos_encoding.temporal_pos", "pos_embed_temporal"),
    ("pos_encoding.class_pos", "pos_embed_class"), (".attn.project.0.", ".attn.proj."),
    (".mlp.0.", ".mlp.fc1."), (".mlp.3.", ".mlp.fc2."), (".project.", ".proj."),
    ("head.1.", "head.projection."),
]


def to_pyslowfast(state_dict):
  out = {}
  for key, value in state_dict.items():
    for a, b in PYSLOWFAST_NAMES:
      key = key.replace(a, b)
    # attn.pool_q.pool.weight -> attn.pool_q.weight; attn.pool_q.norm_act.0.* -> attn.norm_q.*
    key = key.replace(".pool.weight", ".weight")
    if ".norm_act.0." in key:
      head, tail = key.split(".norm_act.0.")
      key = f"{head.replace('.pool_', '.norm_')}.{tail}"
    if key in ("cls_token", "pos_embed_class"):
      value = value.reshape(1, 1, -1)
    elif key.startswith("pos_embed_"):
      value = value[None]
    out[key] = value
  return out


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def torchvision_state(version, seed=0):
  return {k: v.numpy() for k, v in tiny_torchvision(version, 4, 32, seed).state_dict().items()}


@pytest.mark.parametrize("version", [1, 2])
def test_a_pyslowfast_checkpoint_converts_as_torchvisions_does(tmp_path, version):
  """The same weights under PySlowFast's names, in a .pyth file ({"model_state": ...}),
  through the convert_weights tool, give exactly what torchvision's names give."""
  from vidtx.tools import convert_weights
  tv = torchvision_state(version)
  config = tiny_config(version, 4, 32)
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  expected = weights.convert(tv, abstract, mvit_weights.SOURCES)
  psf = to_pyslowfast(tv)
  assert weights.find_source(psf, mvit_weights.SOURCES) is mvit_weights.PYSLOWFAST
  path = str(tmp_path / "checkpoint_epoch_00200.pyth")
  torch.save({"model_state": {k: torch.from_numpy(v) for k, v in psf.items()}, "epoch": 200},
             path)
  got = flat(convert_weights.convert(config, path, str(tmp_path / "out")))
  assert got.keys() == flat(expected).keys()
  for k, v in flat(expected).items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_a_joint_position_table_from_pyslowfast_gives_the_separable_models_logits():
  """PySlowFast's joint pos_embed [1, 1 + T H W, D] (SEP_POS_EMBED False) holding the sum of a
  separable model's tables (row t H W + s = spatial[s] + temporal[t], CLS first) converts into
  a model.mvit.pos_embed="joint" model with the separable (torchvision) model's logits."""
  torch_model = tiny_torchvision(1, 4, 32)
  psf = to_pyslowfast({k: v.numpy() for k, v in torch_model.state_dict().items()})
  spatial, temporal = psf.pop("pos_embed_spatial")[0], psf.pop("pos_embed_temporal")[0]
  table = (temporal[:, None] + spatial[None]).reshape(-1, spatial.shape[-1])
  psf["pos_embed"] = np.concatenate([psf.pop("pos_embed_class")[0], table])[None]
  config = tiny_config(1, 4, 32)
  config.model.mvit.pos_embed = "joint"
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  params = weights.convert(psf, abstract, mvit_weights.SOURCES)
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  clip = np.random.default_rng(0).standard_normal((2, 3, 4, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(clip)).numpy()
  logits = logits_of(nnx.merge(graphdef, state), jnp.asarray(clip.transpose(0, 2, 3, 4, 1)))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  with pytest.raises(ValueError, match="torchvision's MViT has separable position"):
    weights.convert({k: v.numpy() for k, v in torch_model.state_dict().items()}, abstract,
                    mvit_weights.SOURCES)
