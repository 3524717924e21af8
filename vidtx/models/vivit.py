"""ViViT (Arnab et al., 2021): a video ViT over tubelet tokens, in four space-time designs.

Follows Scenic's `scenic/projects/vivit/model.py` (SYSTEMS.md §6): tubelets of 2x16x16 (a Conv3d
with kernel == stride), learned position embeddings, blocks whose qkv has full (q, k, v) biases
and whose MLP uses the tanh GELU (Flax's default), LayerNorm eps 1e-6, a final LN over the
tokens, and the head (zero-initialised in Scenic: config.model.head_init_scale=0).

- Model 1, attention="joint": CLS + all T' H' W' tokens; every token attends to every token.
  CLS -> head.
- Model 2, "factorised_encoder": a spatial ViT with its own CLS runs on each time slice (the
  same weights for every slice); its T' CLS outputs, with a CLS of their own and a learned
  temporal position embedding, go through a temporal transformer of `temporal_depth` blocks.
  CLS -> head.
- Model 3, "factorised_self": each block attends within frames, then over time (each with its
  own LN and residual), then the MLP. No CLS: the mean token -> head.
- Model 4, "factorised_dot": each block's attention gives half its heads to time and half to
  space, with one output projection. No CLS: the mean token -> head.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers, vit
from vidtx.models.family import Family
from vidtx.weights import vivit as vivit_weights

ATTENTIONS = ("joint", "factorised_encoder", "factorised_self", "factorised_dot")


def _head(width, num_classes, init_scale, rngs):
  init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * init_scale
  return layers.Dense(width, num_classes, ("embed", "classes"), kernel_init=init, rngs=rngs)


class ViViT(nnx.Module):
  """Models 1, 3 and 4: one encoder over every tubelet token."""

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int,
               patch_size=(2, 16, 16), width: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, attention: str = "joint",
               drop_path: float = 0.0, head_init_scale: float = 0.0, remat: str = "none",
               dtype=jnp.float32, rngs: nnx.Rngs):
    if attention not in ATTENTIONS or attention == "factorised_encoder":
      raise ValueError(f"config.model.attention={attention!r}: ViViT takes one of {ATTENTIONS} "
                       "('factorised_encoder' is the FactorisedEncoder class)")
    self.encoder = vit.Encoder(
        num_frames=num_frames, image_size=image_size, patch_size=patch_size, width=width,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, k_bias=True,
        approximate_gelu=True, pos_embed="learned", cls_token=attention == "joint",
        attention=attention, drop_path=drop_path, remat=remat, dtype=dtype, rngs=rngs)
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.head = _head(width, num_classes, head_init_scale, rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]; `key` drives drop path and
    is only used when `train`. ViViT sees every token: `keep` must be None."""
    if keep is not None:
      raise ValueError("ViViT sees every token: set config.model.masking='none'")
    x = self.norm(self.encoder(video, key=key if train else None))
    x = x[:, 0] if self.encoder.cls_token is not None else x.mean(axis=1)
    return self.head(x).astype(jnp.float32), {}


class TemporalTransformer(nnx.Module):
  """Model 2's temporal transformer over one token per time slice: CLS + learned position
  embedding (CLS first) + pre-LN blocks + LN."""

  def __init__(self, num_tokens: int, width: int, depth: int, num_heads: int, *,
               mlp_ratio: float, qkv_bias: bool, drop_path: float, remat: str, dtype,
               rngs: nnx.Rngs):
    self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    self.pos_embed = layers.LearnedPosEmbed(1 + num_tokens, width, rngs=rngs)
    self.blocks = nnx.List([
        layers.Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, k_bias=True,
                     approximate_gelu=True, drop_path=rate, remat=remat, dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)
    ])
    self.norm = layers.LayerNorm(width, rngs=rngs)

  def __call__(self, x, key=None):
    """Normalised tokens [B, 1 + T', D] (CLS first) for tokens [B, T', D]."""
    pos = self.pos_embed.table().astype(x.dtype)
    cls = self.cls_token[...].astype(x.dtype) + pos[:1]
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x + pos[1:]], 1)
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    return self.norm(x)


class FactorisedEncoder(nnx.Module):
  """Model 2: a spatial ViT per time slice, then a temporal transformer over their CLS."""

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int,
               patch_size=(2, 16, 16), width: int = 768, depth: int = 12, num_heads: int = 12,
               temporal_depth: int = 4, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               drop_path: float = 0.0, head_init_scale: float = 0.0, remat: str = "none",
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.slice_frames = patch_size[0]  # a time slice is one tubelet thick
    self.num_slices = num_frames // self.slice_frames
    # The spatial transformer: a ViT over one time slice, with its CLS token.
    self.encoder = vit.Encoder(
        num_frames=self.slice_frames, image_size=image_size, patch_size=patch_size, width=width,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, k_bias=True,
        approximate_gelu=True, pos_embed="learned", cls_token=True, drop_path=drop_path,
        remat=remat, dtype=dtype, rngs=rngs)
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.temporal = TemporalTransformer(self.num_slices, width, temporal_depth, num_heads,
                                        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                        drop_path=drop_path, remat=remat, dtype=dtype, rngs=rngs)
    self.head = _head(width, num_classes, head_init_scale, rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]; see `ViViT`."""
    if keep is not None:
      raise ValueError("ViViT sees every token: set config.model.masking='none'")
    b, t = video.shape[:2]
    if t != self.num_slices * self.slice_frames:
      raise ValueError(f"the factorised encoder was built for {self.num_slices} time slices of "
                       f"{self.slice_frames} frames, got a clip of {t}: set config.data.num_frames")
    key = key if train else None
    spatial_key, temporal_key = jax.random.split(key) if key is not None else (None, None)
    slices = video.reshape(b * self.num_slices, self.slice_frames, *video.shape[2:])
    x = self.norm(self.encoder(slices, key=spatial_key))[:, 0]  # each slice's CLS
    x = self.temporal(x.reshape(b, self.num_slices, -1), temporal_key)[:, 0]
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> ViViT | FactorisedEncoder:
  args = dict(num_classes=data_config.num_classes, **vit.encoder_args(model_config, data_config),
              head_init_scale=model_config.head_init_scale, rngs=rngs)
  if model_config.attention == "factorised_encoder":
    return FactorisedEncoder(**args, temporal_depth=model_config.vivit.temporal_depth)
  return ViViT(**args, attention=model_config.attention)


def section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  # Model 2 (attention "factorised_encoder"): blocks of the temporal transformer (B 4, L 24).
  s.temporal_depth = 4
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  m = config.model
  vit.check_heads(config)
  if m.attention == "factorised_dot" and vit.size(m)[2] % 2:
    errors.fail("model.num_heads", vit.size(m)[2], "attention='factorised_dot' gives half the "
                "heads to time and half to space: use an even number")
  if m.attention == "factorised_encoder" and m.vivit.temporal_depth < 1:
    errors.fail("model.vivit.temporal_depth", m.vivit.temporal_depth, "the factorised "
                "encoder's temporal transformer needs at least 1 block (ViViT-B: 4)")


_TEMPORAL_OUTPUT = re.compile(r".*blocks/\d+/temporal/attn/(proj|proj_bias)")


def _init_zero(name: str, names: frozenset) -> bool:
  """Model 3's temporal attention starts as a copy of the block's spatial one (init_from from an
  image model), but its output projection at zero, so that the temporal step adds nothing at
  first. (A zero projection still learns: its input is not zero; a wholly zero attention would
  not.) TimeSformer has a zero temporal_fc for this; model 3 has none."""
  return bool(_TEMPORAL_OUTPUT.fullmatch(name)) and name not in names


FAMILY = Family(
    name="vivit",
    build=build,
    sizes=vit.SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
           "attention", "remat", "drop_path", "head_init_scale", "dtype"),
    section=section,
    check=_check,
    attentions=ATTENTIONS,  # models 1, 2, 3, 4
    tubelets=True,
    layer_decay_depth=lambda model_config: vit.size(model_config)[1],
    converters=vivit_weights.SOURCES,  # model 1
    image_model=vit.image_model,
    init_names=lambda name: (name, *layers.temporal_from_spatial(name)),
    init_zero=_init_zero,
    rollout_attentions=("joint", "factorised_self", "factorised_dot"),
)
