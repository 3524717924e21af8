import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, errors, optim
from vidtx.models import vit


def test_weight_decay_only_on_matrices_and_kernels():
  model = vit.VideoViT(num_classes=3, num_frames=2, image_size=16, patch_size=(2, 8, 8), width=16,
                       depth=1, num_heads=2, pos_embed="learned", pool="cls", rngs=nnx.Rngs(0))
  mask = optim.decay_mask(nnx.state(model, nnx.Param))
  flat = {jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value"): decays
          for path, decays in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == ["encoder/blocks/0/attn/proj", "encoder/blocks/0/attn/qkv",
                     "encoder/blocks/0/mlp/fc1/kernel", "encoder/blocks/0/mlp/fc2/kernel",
                     "encoder/patch_embed/kernel", "head/kernel"]
  assert not flat["encoder/pos_embed/embedding"] and not flat["encoder/cls_token"]
  assert not flat["encoder/blocks/0/attn/q_bias"] and not flat["norm/scale"]


def test_schedule_warms_up_then_decays_to_min_lr():
  o = configuration.base().optim
  o.lr, o.warmup_steps, o.warmup_init_lr, o.min_lr = 1e-3, 10, 0.0, 1e-5
  s = optim.schedule(o, total_steps=110)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3)
  assert float(s(60)) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-4)
  assert float(s(110)) == pytest.approx(1e-5)


def test_lr_drops_give_a_step_schedule_after_the_warm_up():
  """VTN's recipe: x0.1 from epoch 13 of 25, x0.01 from epoch 24, each relative to the peak."""
  o = configuration.base().optim
  o.lr, o.warmup_steps, o.lr_drops = 1e-3, 10, ((13 / 25, 0.1), (24 / 25, 0.01))
  s = optim.schedule(o, total_steps=250)
  assert [float(s(i)) for i in (0, 5)] == pytest.approx([0.0, 5e-4])
  assert [float(s(i)) for i in (10, 129)] == pytest.approx([1e-3, 1e-3])
  assert [float(s(i)) for i in (130, 239)] == pytest.approx([1e-4, 1e-4])
  assert [float(s(i)) for i in (240, 250)] == pytest.approx([1e-5, 1e-5])


@pytest.mark.parametrize("drops", [((1.5, 0.1),), ((0.5,),), ((0.5, 0.0),)])
def test_bad_lr_drops_are_named(drops):
  c = configuration.base()
  c.optim.lr_drops = drops
  with pytest.raises(errors.ConfigError, match="optim.lr_drops=.*fraction of total_steps"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_gradient_clipping_bounds_the_update():
  """SGD without momentum steps by -lr x the gradient, so the step's norm is lr x the clipped
  gradient's: a gradient of norm 300 clipped to 1. (AdamW's step would not show it: it divides
  the gradient's scale out.)"""
  o = configuration.base().optim
  o.name, o.momentum, o.nesterov = "sgd", 0.0, False
  o.lr, o.warmup_steps, o.weight_decay = 0.1, 0, 0.0
  params = {"w": np.zeros((3, 3), np.float32)}
  big = {"w": np.full((3, 3), 100.0, np.float32)}  # norm 300
  norms = {}
  for clip in (0.0, 1.0):
    o.grad_clip = clip
    tx = optim.build(o, total_steps=10)
    updates, _ = tx.update(big, tx.init(params), params)
    norms[clip] = float(np.linalg.norm(updates["w"]))
  assert norms[0.0] == pytest.approx(0.1 * 300, rel=1e-5)
  assert norms[1.0] == pytest.approx(0.1 * 1.0, rel=1e-5)


def test_layer_decay_scales_each_layers_update():
  """VideoMAE: lr x decay^(L + 1 - i); embeddings i = 0, block n i = n + 1, the rest L + 1."""
  model = vit.VideoViT(num_classes=3, num_frames=2, image_size=16, patch_size=(2, 8, 8), width=16,
                       depth=2, num_heads=2, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  o = configuration.base().optim
  o.warmup_steps, o.weight_decay, o.lr = 0, 0.0, 1e-3
  grads = jax.tree.map(np.ones_like, params)
  plain = optim.build(o, total_steps=10)
  o.layer_decay = 0.5
  decayed = optim.build(o, total_steps=10, depth=2, layer_of=vit.FAMILY.layer_of)
  ref, _ = plain.update(grads, plain.init(params), params)
  out, _ = decayed.update(grads, decayed.init(params), params)
  ratio = lambda get: float(np.asarray(get(out)).ravel()[0] / np.asarray(get(ref)).ravel()[0])
  assert ratio(lambda s: s["encoder"]["patch_embed"]["kernel"][...]) == pytest.approx(0.5 ** 3)
  assert ratio(lambda s: s["encoder"]["blocks"][0]["attn"]["qkv"][...]) == pytest.approx(0.5 ** 2)
  assert ratio(lambda s: s["encoder"]["blocks"][1]["mlp"]["fc1"]["bias"][...]) == pytest.approx(0.5)
  assert ratio(lambda s: s["head"]["kernel"][...]) == pytest.approx(1.0)
  assert ratio(lambda s: s["norm"]["scale"][...]) == pytest.approx(1.0)


def _tiny_vit():
  return vit.VideoViT(num_classes=3, num_frames=2, image_size=16, patch_size=(2, 8, 8), width=16,
                      depth=2, num_heads=2, rngs=nnx.Rngs(0))


def test_lr_scales_scale_matching_groups_and_frozen_params_get_no_update_or_state():
  params = nnx.state(_tiny_vit(), nnx.Param)
  grads = jax.tree.map(np.ones_like, params)
  o = configuration.base().optim
  o.warmup_steps, o.weight_decay, o.lr = 0, 0.0, 1e-3
  plain = optim.build(o, total_steps=10)
  ref, _ = plain.update(grads, plain.init(params), params)
  # The first matching pattern wins: block 1 gets 0.5, the rest of the encoder 0.1.
  o.lr_scales = ((r"^encoder/blocks/1/", 0.5), (r"^encoder/", 0.1))
  o.frozen = (r"^head/",)
  tx = optim.build(o, total_steps=10)
  state = tx.init(params)
  out, _ = tx.update(grads, state, params)
  first = lambda tree, get: float(np.asarray(get(tree)).ravel()[0])
  ratio = lambda get: first(out, get) / first(ref, get)
  assert ratio(lambda s: s["encoder"]["blocks"][1]["attn"]["qkv"][...]) == pytest.approx(0.5)
  assert ratio(lambda s: s["encoder"]["blocks"][0]["attn"]["qkv"][...]) == pytest.approx(0.1)
  assert ratio(lambda s: s["encoder"]["patch_embed"]["kernel"][...]) == pytest.approx(0.1)
  assert ratio(lambda s: s["norm"]["scale"][...]) == pytest.approx(1.0)
  assert not np.any(out["head"]["kernel"][...]) and not np.any(out["head"]["bias"][...])
  # Adam keeps two moments per trained value and none for the frozen head.
  count = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  head = count(params["head"])
  assert count(state) - count(plain.init(params)) == pytest.approx(-2 * head, abs=8)


def test_a_group_pattern_that_matches_nothing_is_an_error():
  params = nnx.state(_tiny_vit(), nnx.Param)
  o = configuration.base().optim
  o.frozen, o.warmup_steps = ("^backbone/",), 0
  with pytest.raises(ValueError, match=r"optim.frozen: '\^backbone/' matches no parameter"):
    optim.build(o, total_steps=10).init(params)
  c = configuration.base()
  c.optim.lr_scales = (("^encoder/", -1.0),)
  with pytest.raises(errors.ConfigError, match="optim.lr_scales"):
    configuration.validate(c, num_devices=1, num_processes=1)
  c.optim.lr_scales, c.optim.frozen = (), ("encoder/(",)
  with pytest.raises(errors.ConfigError, match="optim.frozen.*not a regular expression"):
    configuration.validate(c, num_devices=1, num_processes=1)


def test_sgd_follows_torch_sgd_with_nesterov_momentum_and_l2_decay():
  torch = pytest.importorskip("torch")
  o = configuration.base().optim
  o.name, o.lr, o.warmup_steps, o.min_lr = "sgd", 0.1, 0, 0.1  # a constant lr
  o.momentum, o.nesterov, o.weight_decay = 0.9, True, 0.01
  tx = optim.build(o, total_steps=10)
  rng = np.random.default_rng(0)
  params = {"w": rng.standard_normal((3, 2)).astype(np.float32),
            "b": rng.standard_normal(2).astype(np.float32)}  # 1-D: no weight decay
  grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(3)]
  w, b = (torch.nn.Parameter(torch.tensor(params[k])) for k in ("w", "b"))
  reference = torch.optim.SGD([{"params": [w], "weight_decay": 0.01},
                               {"params": [b], "weight_decay": 0.0}], lr=0.1, momentum=0.9,
                              nesterov=True)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    w.grad, b.grad = torch.tensor(g["w"]), torch.tensor(g["b"])
    reference.step()
  np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(params["b"], b.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_an_unknown_optimizer_is_named():
  c = configuration.base()
  c.optim.name = "lamb"
  with pytest.raises(errors.ConfigError, match="optim.name='lamb': choose one of"):
    configuration.validate(c, num_devices=1, num_processes=1)
