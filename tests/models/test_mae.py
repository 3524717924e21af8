import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import configuration, models
from vidtx.models import layers, mae, masking

GRID = (2, 4, 4)  # 4 frames of 32x32 in 2x8x8 tubelets


def tiny(**kw):
  args = dict(num_classes=5, num_frames=4, image_size=32, patch_size=(2, 8, 8), width=32,
              depth=2, num_heads=4, decoder_width=16, decoder_depth=1, decoder_heads=2,
              bridge_width=32, bridge_depth=1, bridge_heads=4)
  args.update(kw)
  return mae.MaskedVideoModel(**args, rngs=nnx.Rngs(0))


def video(seed=0, b=2):
  return jax.random.normal(jax.random.key(seed), (b, 4, 32, 32, 3))


def test_pixel_targets_are_normalised_per_tubelet_and_channel():
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  v = video()
  targets = mae.pixel_targets(v, (2, 8, 8), mean, std)
  assert targets.shape == (2, 32, 2 * 8 * 8 * 3)
  # Tubelet n = 5 is (t=0, h=1, w=1): frames 0-1, rows 8-15, columns 8-15; channel 2.
  pixels = np.asarray(v[1, 0:2, 8:16, 8:16, 2]) * 0.3 + 0.6
  expected = (pixels - pixels.mean()) / (pixels.std(ddof=1) + 1e-6)
  np.testing.assert_allclose(targets[1, 5].reshape(2, 8, 8, 3)[..., 2], expected, rtol=1e-4,
                             atol=1e-5)


def test_masked_indices_complement_keep_in_order():
  keep = jnp.array([[0, 3, 4], [1, 2, 5]])
  np.testing.assert_array_equal(mae.masked_indices(keep, 6), [[1, 2, 5], [0, 3, 4]])


def test_pretraining_outputs_reconstruction_loss_only():
  model = tiny()
  keep = masking.keep_indices("tube", jax.random.key(1), 2, GRID, 0.75)  # 8 visible of 32
  logits, aux = model(video(), train=True, key=jax.random.key(2), keep=keep)
  assert logits is None
  assert aux["recon_mse"].shape == (2,) and np.all(aux["recon_mse"] > 0)
  np.testing.assert_allclose(aux["loss"], aux["recon_mse"])  # recon_weight 1
  # The decoder predicts each masked tubelet's pixels.
  tokens = model.norm(model.encoder(video(), keep=keep))
  assert model.reconstruct(tokens, keep).shape == (2, 24, 2 * 8 * 8 * 3)


def test_reconstruction_matches_its_definition():
  """MSE between the decoder's predictions and the normalised pixels of the masked tubelets."""
  model = tiny()
  v = video()
  keep = masking.keep_indices("random", jax.random.key(1), 2, GRID, 0.5)
  _, aux = model(v, train=False, keep=keep)
  tokens = model.norm(model.encoder(v, keep=keep))
  pred = model.reconstruct(tokens, keep)
  masked = mae.masked_indices(keep, 32)
  target = jnp.take_along_axis(mae.pixel_targets(v, (2, 8, 8), model.mean, model.std),
                               masked[..., None], axis=1)
  np.testing.assert_allclose(aux["recon_mse"], ((pred - target) ** 2).mean(axis=(1, 2)),
                             rtol=1e-5)


def test_decoder_order_of_tokens_does_not_matter():
  """Our decoder keeps tokens in original order; VideoMAE puts the visible ones first.
  Attention is order-free, so a permuted sequence gives the same masked predictions."""
  model = tiny()
  keep = masking.keep_indices("random", jax.random.key(3), 1, GRID, 0.5)
  tokens = model.norm(model.encoder(video(b=1), keep=keep))
  ours = model.reconstruct(tokens, keep)
  masked = mae.masked_indices(keep, 32)
  pos = model.decoder_pos_embed.table()
  x = model.encoder_to_decoder(tokens)
  visible_first = jnp.concatenate(
      [x + pos[keep[0]][None], model.mask_token[...] + pos[masked[0]][None]], axis=1)
  for block in model.decoder.blocks:
    visible_first = block(visible_first)
  theirs = model.decoder.head(model.decoder.norm(visible_first[:, keep.shape[1]:]))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_mar_loss_combines_classification_and_weighted_reconstruction():
  keep = masking.keep_indices("cell_running", jax.random.key(1), 2, GRID, 0.5)
  model = tiny(classifier="bridge", recon_weight=0.1)
  logits, aux = model(video(), train=True, key=jax.random.key(2), keep=keep)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  np.testing.assert_allclose(aux["loss"], 0.1 * aux["recon_mse"], rtol=1e-6)
  # Inference runs the encoder and the classifier only.
  logits, aux = model(video(), train=False, keep=keep)
  assert logits.shape == (2, 5) and aux == {}


def test_reconstruction_gradients_reach_the_encoder():
  model = tiny(classifier="bridge")
  keep = masking.keep_indices("cell_running", jax.random.key(1), 2, GRID, 0.5)

  def recon(model):
    return model(video(), train=True, key=jax.random.key(2), keep=keep)[1]["loss"].mean()

  grads = nnx.grad(recon)(model)
  assert float(jnp.abs(grads.encoder.blocks[0].attn.qkv[...]).max()) > 0
  assert float(jnp.abs(grads.encoder.patch_embed.kernel[...]).max()) > 0
  # ... and the classifier gets none from it.
  assert float(jnp.abs(grads.classifier.head.kernel[...]).max()) == 0


def test_masked_tubelets_do_not_reach_the_classifier():
  model = tiny(classifier="bridge")
  keep = masking.keep_indices("cell_running", None, 1, GRID, 0.5)
  v = video(b=1)
  masked = int(mae.masked_indices(keep, 32)[0, 0])
  t, h, w = masked // 16, masked // 4 % 4, masked % 4
  changed = v.at[:, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8].add(3.0)
  np.testing.assert_allclose(model(changed, keep=keep)[0], model(v, keep=keep)[0], rtol=1e-6)


def config(**model):
  c = configuration.base()
  c.model.name = "mae"
  c.model.masking, c.model.mask_ratio = "tube", 0.9
  c.model.update(model)
  c.data.num_frames, c.data.crop_size, c.data.min_resize = 16, 224, 256
  c.data.num_classes = 400
  return c


@pytest.mark.parametrize("size,decoder", [("S", (192, 4)), ("B", (384, 4)), ("L", (512, 12)),
                                          ("H", (640, 12))])
def test_videomae_pretraining_sizes(size, decoder):
  c = config(size=size)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert model.mask_token.shape == (1, 1, decoder[0])
  assert len(model.decoder.blocks) == decoder[1]
  assert model.decoder.head.kernel.shape == (decoder[0], 1536)


def test_videomae_b_pretraining_parameter_count():
  # Counted piece by piece so a wrong piece shows which; the whole is checked against HF
  # VideoMAEForPreTraining in tests/parity.
  c = config(size="B")
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  count = lambda m: layers.count_params(nnx.state(m, nnx.Param))
  encoder = count(model.encoder) + count(model.norm)
  assert encoder == 86_534_800 - (768 * 400 + 400)  # the ViT-B classifier minus its head
  # qkv 3d^2 + q/v biases 2d + proj d^2 + d + two norms 4d + MLP 8d^2 + 5d.
  block = lambda d: 12 * d * d + 12 * d
  assert count(model.decoder) == 4 * block(384) + 2 * 384 + 384 * 1536 + 1536
  assert count(model.encoder_to_decoder) == 768 * 384 and model.mask_token.shape == (1, 1, 384)


def test_pretraining_fits_a_fixed_batch():
  """80 Adam steps on one batch and mask cut the reconstruction error by a fifth (the clip is
  white noise, so a tiny decoder memorises it slowly): the gradients reach every piece."""
  import optax
  model = tiny()
  v = video(b=4)
  keep = masking.keep_indices("tube", jax.random.key(1), 4, GRID, 0.75)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: m(v, keep=keep)[1]["loss"].mean())(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(80)]
  assert losses[-1] < 0.8 * losses[0]
