"""Video ViT: tubelet embedding, position embedding, pre-LN blocks, mean-pool or CLS head.

With `pos_embed="sincos"`, `pool="mean"` and `qkv_bias=True` this is VideoMAE's fine-tuning
model (`modeling_finetune.VisionTransformer`): same parameters, same names up to layout.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx.models import layers

# width, depth, heads of the standard ViT sizes.
SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


class VideoViT(nnx.Module):

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int,
               patch_size=(2, 16, 16), width: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, pos_embed: str = "sincos",
               pool: str = "mean", drop_path: float = 0.0, head_dropout: float = 0.0,
               head_init_scale: float = 1.0, dtype=jnp.float32, rngs: nnx.Rngs):
    self.pool, self.head_dropout = pool, head_dropout
    self.patch_embed = layers.TubeletEmbed(patch_size, 3, width, dtype=dtype, rngs=rngs)
    grid = self.patch_embed.grid((1, num_frames, image_size, image_size, 3))
    num_tokens = grid[0] * grid[1] * grid[2] + (pool == "cls")
    if pool == "cls":
      self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    elif pool != "mean":
      raise ValueError(f"config.model.pool={pool!r}: use 'mean' or 'cls'")
    if pos_embed == "sincos":
      self.pos_embed = layers.SinCosPosEmbed(num_tokens, width)
    elif pos_embed == "learned":
      self.pos_embed = layers.LearnedPosEmbed(num_tokens, width, rngs=rngs)
    else:
      raise ValueError(f"config.model.pos_embed={pos_embed!r}: use 'sincos' or 'learned'")
    self.blocks = nnx.List([
        layers.Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                     dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)
    ])
    # Mean pooling normalises the pooled feature (VideoMAE's fc_norm); CLS normalises tokens.
    self.norm = layers.LayerNorm(width, rngs=rngs)
    head_init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * head_init_scale
    self.head = layers.Dense(width, num_classes, ("embed", "classes"), kernel_init=head_init,
                             rngs=rngs)

  def features(self, video, *, key=None, keep=None):
    """Encoded tokens [B, N, D] (after the blocks, before the final norm).

    `keep` [B, K]: indices of the visible tubelet tokens (`vidtx.models.masking`); only those
    are embedded and encoded, each with its own position embedding.
    """
    x = self.patch_embed(video, keep)  # masked tubelets are never projected
    pos = self.pos_embed.table().astype(x.dtype)
    if self.pool == "cls":  # row 0 of the table is the CLS token's
      cls_pos, pos = pos[:1], pos[1:]
    x = x + (pos[None] if keep is None else pos[keep])
    if self.pool == "cls":
      cls = self.cls_token[...].astype(x.dtype) + cls_pos
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    return x

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """Logits [B, classes] (float32) for video [B, T, H, W, 3]. `key` drives drop path and
    dropout and is only used when `train`; `keep` selects visible tokens (see `features`)."""
    key = key if train else None
    feature_key, dropout_key = jax.random.split(key) if key is not None else (None, None)
    x = self.features(video, key=feature_key, keep=keep)
    x = self.norm(x.mean(axis=1)) if self.pool == "mean" else self.norm(x)[:, 0]
    if dropout_key is not None and self.head_dropout > 0:
      keep = jax.random.bernoulli(dropout_key, 1.0 - self.head_dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.head_dropout), 0).astype(x.dtype)
    return self.head(x).astype(jnp.float32)


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> VideoViT:
  width, depth, heads = SIZES[model_config.size]
  return VideoViT(
      num_classes=data_config.num_classes,
      num_frames=data_config.num_frames,
      image_size=data_config.crop_size,
      patch_size=tuple(model_config.patch_size),
      width=model_config.width or width,
      depth=model_config.depth or depth,
      num_heads=model_config.num_heads or heads,
      mlp_ratio=model_config.mlp_ratio,
      qkv_bias=model_config.qkv_bias,
      pos_embed=model_config.pos_embed,
      pool=model_config.pool,
      drop_path=model_config.drop_path,
      head_dropout=model_config.head_dropout,
      head_init_scale=model_config.head_init_scale,
      dtype=jnp.dtype(model_config.dtype),
      rngs=rngs,
  )
