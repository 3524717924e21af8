"""Masked video models: VideoMAE pre-training and MAR (Masked Action Recognition).

One module, two uses (SYSTEMS.md §1-2):
- `classifier="none"`: VideoMAE pre-training. The encoder sees the visible tokens only; a light
  decoder reconstructs the masked tubelets' normalised pixels; the loss is their MSE.
- `classifier="bridge"`: MAR. The same encoder and decoder plus a bridging classifier on the
  visible tokens; training adds `recon_weight` (lambda) times the reconstruction MSE to the
  classification loss, and inference runs the encoder and classifier only.

Names follow VideoMAE's `modeling_pretrain.py` (encoder, norm, encoder_to_decoder, mask_token,
decoder.blocks/norm/head) so a pre-training checkpoint initialises MAR by name.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers, vit
from vidtx.models.family import Family
from vidtx.weights import videomae

# Decoder width, heads and depth per encoder size (VideoMAE's pre-training scripts; Ti is ours).
DECODER_SIZES = {
    "Ti": (96, 3, 4),
    "S": (192, 3, 4),
    "B": (384, 6, 4),
    "L": (512, 8, 12),
    "H": (640, 8, 12),
}
CLASSIFIERS = ("none", "bridge")
# The decoder and bridging classifier at the CPU size of `configuration.cpu_scale`, which the
# synthetic pre-training and MAR configs share (so the one initialises the other whole).
CPU_SIZES = dict(decoder_width=64, decoder_depth=2, decoder_heads=4, bridge_width=64,
                 bridge_depth=1, bridge_heads=4)


def pixel_targets(video, patch, mean, std):
  """Per-tubelet normalised pixels [B, N, pt*ph*pw*3] in float32, the reconstruction target.

  The input normalisation is undone, then each tubelet's channels are standardised over the
  tubelet's pixels with the unbiased std (+1e-6), and flattened in (t, h, w, c) order.
  """
  pixels = video.astype(jnp.float32) * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
  x = layers.tubelets(pixels, patch)
  x = (x - x.mean(axis=2, keepdims=True)) / (jnp.std(x, axis=2, ddof=1, keepdims=True) + 1e-6)
  return jax.lax.stop_gradient(x.reshape(*x.shape[:2], -1))


def masked_indices(keep, num_tokens: int):
  """[B, N - K] indices of the tokens not in `keep` [B, K], in increasing order."""
  visible = jnp.zeros(keep.shape[:1] + (num_tokens,), bool)
  visible = visible.at[jnp.arange(keep.shape[0])[:, None], keep].set(True)
  # A stable sort of the flags puts the masked (False) tokens first, in index order.
  return jnp.argsort(visible, axis=1, stable=True)[:, :num_tokens - keep.shape[1]]


def _gather(x, indices):
  return jnp.take_along_axis(x, indices[..., None], axis=1)


class Decoder(nnx.Module):
  """Pre-LN blocks -> LN -> Linear to a tubelet's pixels."""

  def __init__(self, width: int, depth: int, num_heads: int, out_dim: int, *, remat: str, dtype,
               rngs: nnx.Rngs):
    self.blocks = nnx.List([layers.Block(width, num_heads, remat=remat, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.head = layers.Dense(width, out_dim, ("embed", None), dtype=dtype, rngs=rngs)


class BridgingClassifier(nnx.Module):
  """MAR's bridging classifier on the visible tokens: Linear (no bias) -> pre-LN blocks ->
  token mean -> LN -> dropout -> Linear. Xavier-uniform init throughout."""

  def __init__(self, in_dim: int, width: int, depth: int, num_heads: int, num_classes: int, *,
               dropout: float, remat: str, dtype, rngs: nnx.Rngs):
    self.dropout = dropout
    self.proj = layers.Dense(in_dim, width, ("embed", None), use_bias=False, dtype=dtype,
                             rngs=rngs)
    self.blocks = nnx.List([layers.Block(width, num_heads, remat=remat, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.head = layers.Dense(width, num_classes, ("embed", "classes"), rngs=rngs)

  def __call__(self, tokens, key=None):
    x = self.proj(tokens)
    for block in self.blocks:
      x = block(x)
    x = layers.dropout(self.norm(x.mean(axis=1)), self.dropout, key)
    return self.head(x).astype(jnp.float32)


class MaskedVideoModel(nnx.Module):

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int,
               patch_size=(2, 16, 16), width: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0,
               decoder_width: int = 384, decoder_depth: int = 4, decoder_heads: int = 6,
               classifier: str = "none", bridge_width: int = 512, bridge_depth: int = 2,
               bridge_heads: int = 4, head_dropout: float = 0.0, recon_weight: float = 1.0,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), remat: str = "none",
               dtype=jnp.float32, rngs: nnx.Rngs):
    if classifier not in CLASSIFIERS:
      raise ValueError(f"config.model.mae.classifier={classifier!r}: use one of {CLASSIFIERS}")
    self.patch_size, self.mean, self.std = tuple(patch_size), tuple(mean), tuple(std)
    self.recon_weight = recon_weight
    self.encoder = vit.Encoder(num_frames=num_frames, image_size=image_size,
                               patch_size=patch_size, width=width, depth=depth,
                               num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                               pos_embed="sincos", drop_path=drop_path, remat=remat,
                               dtype=dtype, rngs=rngs)
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.encoder_to_decoder = layers.Dense(width, decoder_width, ("embed", None), use_bias=False,
                                           dtype=dtype, rngs=rngs)
    self.mask_token = layers.param(rngs, layers.zeros, (1, 1, decoder_width),
                                   (None, None, "embed"))
    self.decoder_pos_embed = layers.SinCosPosEmbed(self.encoder.num_patches, decoder_width)
    self.decoder = Decoder(decoder_width, decoder_depth, decoder_heads,
                           3 * self.patch_size[0] * self.patch_size[1] * self.patch_size[2],
                           remat=remat, dtype=dtype, rngs=rngs)
    if classifier == "bridge":
      self.classifier = BridgingClassifier(width, bridge_width, bridge_depth, bridge_heads,
                                           num_classes, dropout=head_dropout, remat=remat,
                                           dtype=dtype, rngs=rngs)
    else:
      self.classifier = None

  def reconstruct(self, tokens, keep):
    """Predicted pixels [B, N - K, pt*ph*pw*3] of the masked tubelets, in increasing index
    order, from the normalised visible tokens [B, K, D].

    The decoder sees all N tokens in their original order: the learned mask token everywhere,
    the projected visible tokens in their slots, the sinusoid added to every token. (VideoMAE
    puts the visible ones first; attention does not see order, so the result is the same.)
    """
    x = self.encoder_to_decoder(tokens)
    b, n = x.shape[0], self.encoder.num_patches
    full = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, n, x.shape[-1]))
    full = full.at[jnp.arange(b)[:, None], keep].set(x)
    x = full + self.decoder_pos_embed.table().astype(x.dtype)[None]
    for block in self.decoder.blocks:
      x = block(x)
    masked = masked_indices(keep, n)
    return self.decoder.head(self.decoder.norm(_gather(x, masked))).astype(jnp.float32)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits or None, aux) for video [B, T, H, W, 3] and visible tokens `keep` [B, K].

    The decoder runs in training and, for pre-training, at evaluation too (reconstruction is
    then its only output); MAR's inference is encoder + classifier. aux holds the per-example
    `recon_mse` and the weighted term `loss` when the decoder runs.
    """
    if keep is None:
      raise ValueError("a masked video model needs masked tokens: set config.model.masking "
                       "(e.g. 'tube' or 'cell_running') and config.model.mask_ratio")
    key = key if train else None
    encoder_key, dropout_key = jax.random.split(key) if key is not None else (None, None)
    tokens = self.norm(self.encoder(video, key=encoder_key, keep=keep))
    logits = None if self.classifier is None else self.classifier(tokens, dropout_key)
    aux = {}
    if train or self.classifier is None:
      pred = self.reconstruct(tokens, keep)
      target = _gather(pixel_targets(video, self.patch_size, self.mean, self.std),
                       masked_indices(keep, self.encoder.num_patches))
      mse = jnp.mean(jnp.square(pred - target), axis=(1, 2))
      aux = {"recon_mse": mse, "loss": self.recon_weight * mse}
    return logits, aux


def decoder_size(model_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(width, heads, depth) of the decoder: the encoder size's, unless overridden."""
  width, heads, depth = DECODER_SIZES[model_config.size]
  s = model_config.mae
  return (s.decoder_width or width, s.decoder_heads or heads, s.decoder_depth or depth)


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> MaskedVideoModel:
  s = model_config.mae
  decoder_width, decoder_heads, decoder_depth = decoder_size(model_config)
  return MaskedVideoModel(
      num_classes=data_config.num_classes,
      **vit.encoder_args(model_config, data_config),
      decoder_width=decoder_width,
      decoder_depth=decoder_depth,
      decoder_heads=decoder_heads,
      classifier=s.classifier,
      bridge_width=s.bridge_width,
      bridge_depth=s.bridge_depth,
      bridge_heads=s.bridge_heads,
      head_dropout=model_config.head_dropout,
      recon_weight=s.recon_weight,
      mean=tuple(data_config.mean),
      std=tuple(data_config.std),
      rngs=rngs,
  )


def section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.classifier = "none"  # "none": VideoMAE pre-training; "bridge": MAR's bridging classifier
  # The decoder reconstructs the masked tubelets' normalised pixels.
  s.decoder_width = 0  # > 0 overrides the size's (S 192, B 384, L 512, H 640)
  s.decoder_depth = 0  # > 0 overrides the size's (S/B 4, L/H 12)
  s.decoder_heads = 0  # > 0 overrides the size's (S 3, B 6, L/H 8)
  s.bridge_width = 512  # MAR's bridging classifier: width, blocks, heads
  s.bridge_depth = 2
  s.bridge_heads = 4
  s.recon_weight = 1.0  # lambda: weight of the reconstruction MSE (MAR: 0.01 K400, 0.1 SSv2)
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  m, s = config.model, config.model.mae
  vit.check_heads(config)
  if s.classifier not in CLASSIFIERS:
    errors.fail("model.mae.classifier", s.classifier, f"choose one of {CLASSIFIERS}")
  if m.masking == "none" or m.mask_ratio == 0:
    errors.fail("model.masking", m.masking, "a masked video model needs masked tokens: set "
                "model.masking (tube, cell_running, random) and model.mask_ratio > 0")
  decoder_width, decoder_heads, _ = decoder_size(m)
  if decoder_width % decoder_heads:
    errors.fail("model.mae.decoder_width", decoder_width,
                f"must be divisible by model.mae.decoder_heads={decoder_heads}")
  if s.bridge_width % s.bridge_heads:
    errors.fail("model.mae.bridge_width", s.bridge_width,
                f"must be divisible by model.mae.bridge_heads={s.bridge_heads}")


def _classify_all_tokens(model: MaskedVideoModel, video):
  """MAR's inference over every token: the encoder and the bridging classifier (None for
  pre-training); the decoder, which attends over mask tokens, is left out."""
  tokens = model.norm(model.encoder(video))
  return None if model.classifier is None else model.classifier(tokens)


def _reconstruct_masked(model: MaskedVideoModel, video, keep):
  """(the decoder's predictions of the masked tubelets, their indices) for `Family`."""
  pred = model.reconstruct(model.norm(model.encoder(video, keep=keep)), keep)
  return pred, masked_indices(keep, model.encoder.num_patches)


FAMILY = Family(
    name="mae",
    build=build,
    sizes=vit.SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
           "attention", "remat", "drop_path", "head_dropout", "dtype", "masking", "mask_ratio"),
    section=section,
    check=_check,
    attentions=("joint",),
    tubelets=True,
    classifies=lambda model_config: model_config.mae.classifier != "none",
    logits_fix=("model.mae.classifier='none' pre-trains; use a run fine-tuned from it "
                "(model.mae.classifier='bridge', or a vit with config.init_from)"),
    layer_decay_depth=lambda model_config: vit.size(model_config)[1],
    converters=videomae.SOURCES,
    image_model=vit.image_model,
    rollout_attentions=("joint",),
    rollout_forward=_classify_all_tokens,
    reconstruct=_reconstruct_masked,
)
