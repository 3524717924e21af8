import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, optim
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


def test_gradient_clipping_bounds_the_update():
  o = configuration.base().optim
  o.grad_clip, o.warmup_steps, o.weight_decay = 1.0, 0, 0.0
  tx = optim.build(o, total_steps=10)
  params = {"w": np.zeros((3, 3), np.float32)}
  state = tx.init(params)
  big = {"w": np.full((3, 3), 100.0, np.float32)}
  updates, _ = tx.update(big, state, params)
  assert np.all(np.isfinite(updates["w"]))


def test_layer_decay_scales_each_layers_update():
  """VideoMAE: lr x decay^(L + 1 - i); embeddings i = 0, block n i = n + 1, the rest L + 1."""
  model = vit.VideoViT(num_classes=3, num_frames=2, image_size=16, patch_size=(2, 8, 8), width=16,
                       depth=2, num_heads=2, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  o = configuration.base().optim
  o.warmup_steps, o.weight_decay, o.lr = 0, 0.0, 1e-3
  grads = jax.tree.map(np.ones_like, params)
  plain = optim.build(o, total_steps=10, depth=2)
  o.layer_decay = 0.5
  decayed = optim.build(o, total_steps=10, depth=2)
  ref, _ = plain.update(grads, plain.init(params), params)
  out, _ = decayed.update(grads, decayed.init(params), params)
  ratio = lambda get: float(np.asarray(get(out)).ravel()[0] / np.asarray(get(ref)).ravel()[0])
  assert ratio(lambda s: s["encoder"]["patch_embed"]["kernel"][...]) == pytest.approx(0.5 ** 3)
  assert ratio(lambda s: s["encoder"]["blocks"][0]["attn"]["qkv"][...]) == pytest.approx(0.5 ** 2)
  assert ratio(lambda s: s["encoder"]["blocks"][1]["mlp"]["fc1"]["bias"][...]) == pytest.approx(0.5)
  assert ratio(lambda s: s["head"]["kernel"][...]) == pytest.approx(1.0)
  assert ratio(lambda s: s["norm"]["scale"][...]) == pytest.approx(1.0)
