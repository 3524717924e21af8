"""Video ViT: tubelet embedding, position embedding, pre-LN blocks, a mean-pool, CLS or
first-token head.

With `pos_embed="sincos"`, `pool="mean"` and `qkv_bias=True` this is VideoMAE's fine-tuning
model (`modeling_finetune.VisionTransformer`): same parameters, same names up to layout; with
`pool="first"` it is that model with use_mean_pooling=False.

Every model returns `(logits, aux)`: logits [B, classes] float32 (None for a model that only
pre-trains) and a dict of per-example [B] float32 extras. `aux["loss"]`, when present, is an
already weighted loss term the training step adds to the classification loss; the other
entries are logged.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers
from vidtx.models.family import SHARED_FIELDS, Family
from vidtx.weights import videomae

# width, depth, heads of the standard ViT sizes.
SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


CLIP_NORM_EPS = 1e-5  # CLIP's LayerNorm eps (PyTorch's default); ViTs here use 1e-6


def norm_eps(clip_style: bool) -> float:
  return CLIP_NORM_EPS if clip_style else 1e-6


def size(model_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(width, depth, heads) of the configured encoder: the size's, unless overridden."""
  width, depth, heads = SIZES[model_config.size]
  return (model_config.width or width, model_config.depth or depth,
          model_config.num_heads or heads)


class Encoder(nnx.Module):
  """Tubelet embedding + position embedding (+ CLS token) + pre-LN blocks, no final norm.

  Shared by every ViT-family model, so one pre-trained encoder moves between them by name.
  `attention` is the blocks' space-time variant (`layers.ATTENTIONS`) over the (t, h, w) tokens;
  `k_bias`, `approximate_gelu` and `remat` are passed to the blocks (`layers.Block`).
  `clip_style`: CLIP's image-tower conventions (`vidtx.models.clip`), so that a CLIP checkpoint
  inflates into it: a bias-free patch embedding, "norm_pre" (ln_pre) on the embedded tokens,
  QuickGELU and LayerNorm eps 1e-5 (`CLIP_NORM_EPS`; the final norm is the model's).
  """

  def __init__(self, *, num_frames: int, image_size: int, patch_size=(2, 16, 16),
               width: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, k_bias: bool = False, approximate_gelu: bool = False,
               pos_embed: str = "sincos", cls_token: bool = False, attention: str = "joint",
               clip_style: bool = False, drop_path: float = 0.0, remat: str = "none",
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.attention = attention
    self.patch_embed = layers.TubeletEmbed(patch_size, 3, width, use_bias=not clip_style,
                                           dtype=dtype, rngs=rngs)
    self.grid = self.patch_embed.grid((1, num_frames, image_size, image_size, 3))
    self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
    num_positions = self.num_patches + cls_token
    if cls_token:
      self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    else:
      self.cls_token = None
    if pos_embed == "sincos":
      self.pos_embed = layers.SinCosPosEmbed(num_positions, width)
    elif pos_embed == "learned":
      self.pos_embed = layers.LearnedPosEmbed(num_positions, width, rngs=rngs)
    else:
      raise ValueError(f"config.model.vit.pos_embed={pos_embed!r}: use 'sincos' or 'learned'")
    self.norm_pre = layers.LayerNorm(width, eps=CLIP_NORM_EPS, rngs=rngs) if clip_style else None
    layout = layers.TokenLayout(frames=self.grid[0], cls_token=cls_token, width=self.grid[2])
    self.blocks = nnx.List([
        layers.Block(width, num_heads, attention=attention, layout=layout, mlp_ratio=mlp_ratio,
                     qkv_bias=qkv_bias, k_bias=k_bias, approximate_gelu=approximate_gelu,
                     quick_gelu=clip_style, norm_eps=norm_eps(clip_style), drop_path=rate,
                     remat=remat, dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)
    ])

  def __call__(self, video, *, key=None, keep=None):
    """Encoded tokens [B, N, D] (CLS first if any) for video [B, T, H, W, 3].

    `keep` [B, K]: indices of the visible tubelet tokens (`vidtx.models.masking`); only those
    are embedded and encoded, each with its own position embedding. `key` drives drop path.
    """
    if keep is not None and self.attention != "joint":
      raise ValueError(f"attention {self.attention!r} needs every token of the grid; masking "
                       "(config.model.masking) works with attention='joint' only")
    x = self.patch_embed(video, keep)  # masked tubelets are never projected
    pos = self.pos_embed.table().astype(x.dtype)
    if self.cls_token is not None:  # row 0 of the table is the CLS token's
      cls_pos, pos = pos[:1], pos[1:]
    x = x + (pos[None] if keep is None else pos[keep])
    if self.cls_token is not None:
      cls = self.cls_token[...].astype(x.dtype) + cls_pos
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
    if self.norm_pre is not None:
      x = self.norm_pre(x)
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    return x


# config.model.vit.pool -> what the head sees: "mean": the mean token, normalised (VideoMAE's
# fc_norm); "cls": a CLS token prepended to the tokens, after the final LayerNorm over every
# token; "first": the first token after that LayerNorm, without a CLS token (VideoMAE with
# use_mean_pooling=False).
POOLS = ("mean", "cls", "first")


class VideoViT(nnx.Module):
  """The encoder, a final LayerNorm and a Linear head on the pooled feature (see POOLS)."""

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int,
               patch_size=(2, 16, 16), width: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, k_bias: bool = False,
               pos_embed: str = "sincos", pool: str = "mean", attention: str = "joint",
               clip_style: bool = False, drop_path: float = 0.0, head_dropout: float = 0.0,
               head_init_scale: float = 1.0, remat: str = "none", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if pool not in POOLS:
      raise ValueError(f"config.model.vit.pool={pool!r}: use one of {POOLS}")
    self.pool, self.head_dropout = pool, head_dropout
    self.encoder = Encoder(num_frames=num_frames, image_size=image_size, patch_size=patch_size,
                           width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           qkv_bias=qkv_bias, k_bias=k_bias, pos_embed=pos_embed,
                           cls_token=pool == "cls", attention=attention, clip_style=clip_style,
                           drop_path=drop_path, remat=remat, dtype=dtype, rngs=rngs)
    # Mean pooling normalises the pooled feature (VideoMAE's fc_norm); the others the tokens.
    self.norm = layers.LayerNorm(width, eps=norm_eps(clip_style), rngs=rngs)
    head_init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * head_init_scale
    self.head = layers.Dense(width, num_classes, ("embed", "classes"), kernel_init=head_init,
                             rngs=rngs)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]. `key` drives drop path and
    dropout and is only used when `train`; `keep` selects visible tokens (see `Encoder`)."""
    key = key if train else None
    encoder_key, dropout_key = jax.random.split(key) if key is not None else (None, None)
    x = self.encoder(video, key=encoder_key, keep=keep)
    x = self.norm(x.mean(axis=1)) if self.pool == "mean" else self.norm(x)[:, 0]
    x = layers.dropout(x, self.head_dropout, dropout_key)
    return self.head(x).astype(jnp.float32), {}


def image_model(model_config: ml_collections.ConfigDict, side: int, num_classes: int,
                clip_style: bool, rngs: nnx.Rngs) -> VideoViT:
  """The one-frame image ViT that init_from inflates into a ViT-based video model
  (`Family.image_model`): side x side patches of the config's patch size (tubelets 1 x p x p),
  a CLS token, learned positions, q, k and v biases (as image ViTs have), the config's width,
  depth, heads and MLP ratio."""
  width, depth, heads = size(model_config)
  _, ph, pw = model_config.patch_size
  return VideoViT(num_classes=num_classes, num_frames=1, image_size=side * ph,
                  patch_size=(1, ph, pw), width=width, depth=depth, num_heads=heads,
                  mlp_ratio=model_config.mlp_ratio, k_bias=True, pos_embed="learned",
                  pool="cls", clip_style=clip_style, rngs=rngs)


def encoder_args(model_config: ml_collections.ConfigDict,
                 data_config: ml_collections.ConfigDict) -> dict:
  """The Encoder's arguments from the config (every ViT-family model takes these)."""
  width, depth, heads = size(model_config)
  return dict(num_frames=data_config.num_frames, image_size=data_config.crop_size,
              patch_size=tuple(model_config.patch_size), width=width, depth=depth,
              num_heads=heads, mlp_ratio=model_config.mlp_ratio, qkv_bias=model_config.qkv_bias,
              drop_path=model_config.drop_path, remat=model_config.remat,
              dtype=jnp.dtype(model_config.dtype))


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> VideoViT:
  return VideoViT(
      num_classes=data_config.num_classes,
      **encoder_args(model_config, data_config),
      pos_embed=model_config.vit.pos_embed,
      pool=model_config.vit.pool,
      attention=model_config.attention,
      clip_style=model_config.clip_style,
      head_dropout=model_config.head_dropout,
      head_init_scale=model_config.head_init_scale,
      rngs=rngs,
  )


def section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.pos_embed = "sincos"  # "sincos" (fixed, VideoMAE) or "learned"
  # "mean" (+ fc_norm), "cls" (a CLS token) or "first" (the first token, no CLS; see POOLS)
  s.pool = "mean"
  return s


POS_EMBEDS = ("sincos", "learned")


def check_heads(config: ml_collections.ConfigDict) -> None:
  """The encoder's width must split into its heads (every family built on `Encoder`)."""
  width, _, heads = size(config.model)
  if width % heads:
    errors.fail("model.width", width, f"must be divisible by model.num_heads={heads}")


def check_frame_patches(config: ml_collections.ConfigDict, what: str, example: str) -> None:
  """Models that embed each frame's square 2-D patches want model.patch_size (1, p, p)."""
  patch = tuple(config.model.patch_size)
  if len(patch) != 3 or patch[0] != 1 or patch[1] != patch[2]:
    errors.fail("model.patch_size", patch, f"{what} embeds each frame's square 2-D patches: "
                f"use (1, p, p), e.g. {example}")


def check_masking(config: ml_collections.ConfigDict) -> None:
  """Masking drops tokens, which only joint attention does without."""
  m = config.model
  if m.masking != "none" and m.attention != "joint":
    errors.fail("model.masking", m.masking, f"attention={m.attention!r} needs every token of "
                "the grid: set model.masking='none' (masking works with attention='joint' only)")


def _check(config: ml_collections.ConfigDict) -> None:
  s = config.model.vit
  check_heads(config)
  check_masking(config)
  if s.pos_embed not in POS_EMBEDS:
    errors.fail("model.vit.pos_embed", s.pos_embed, f"choose one of {POS_EMBEDS}")
  if s.pool not in POOLS:
    errors.fail("model.vit.pool", s.pool, f"choose one of {POOLS}")
  if s.pool == "first" and config.model.masking != "none":
    errors.fail("model.vit.pool", s.pool, "under masking the first token is whichever is "
                "visible first: use pool='mean' or 'cls' with model.masking, or "
                "model.masking='none'")


FAMILY = Family(
    name="vit",
    build=build,
    sizes=SIZES,
    reads=SHARED_FIELDS,
    section=section,
    check=_check,
    # patch_shift: TPS in ViT blocks (attention within frames over patch-shifted q, k, v)
    attentions=("joint", "patch_shift"),
    tubelets=True,
    layer_decay_depth=lambda model_config: size(model_config)[1],
    converters=videomae.SOURCES,
    image_model=image_model,
    rollout_attentions=("joint",),
)
