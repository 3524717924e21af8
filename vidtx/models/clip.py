"""The CLIP ViT image tower (Radford et al., 2021), applied to every frame of a clip.

Follows OpenAI CLIP's `VisionTransformer` (HF transformers `CLIPVisionModel`), from our shared
pieces: a bias-free patch embedding (a 1 x p x p tubelet), a class embedding and learned
positions (1 + H'W' rows, CLS first), then "ln_pre", a LayerNorm on the embedded tokens before
the blocks. The blocks are pre-LN with full q, k, v biases, QuickGELU and LayerNorm eps 1e-5.
The frame's feature is the CLS token after the final LayerNorm ("ln_post"), optionally mapped
by the bias-free visual projection into CLIP's joint embedding space.

Frames are folded into the batch: tokens are [B T, 1 + S, D], clip-major (row b T + t), so
each frame is encoded exactly as CLIP encodes an image. Video models that put something between
the blocks (ILA) call `embed`, the `blocks` and `features` themselves.

Sizes (width, depth, heads from `vit.SIZES`; patch from config.model.patch_size; proj_dim):
B/32 and B/16: 768, 12, 12, proj 512; L/14 (and L/14@336): 1024, 24, 16, proj 768.
Weights: `vidtx.weights.clip` from HF `CLIPVisionModel`, `CLIPVisionModelWithProjection` or
`CLIPModel` state dicts.
"""

import jax.numpy as jnp
from flax import nnx

from vidtx.models import layers

# CLIP's LayerNorm eps (PyTorch's default).
NORM_EPS = 1e-5


class CLIPVision(nnx.Module):
  """CLIP's image tower over the frames of a clip [B, T, H, W, 3].

  `proj_dim` > 0 adds the visual projection (CLIP's: 512 for B, 768 for L); 0 leaves it out.
  `drop_path` (linear over the blocks) and `remat` are passed to the blocks.
  """

  def __init__(self, *, image_size: int, patch_size: int, width: int = 768, depth: int = 12,
               num_heads: int = 12, mlp_ratio: float = 4.0, proj_dim: int = 0,
               drop_path: float = 0.0, remat: str = "none", dtype=jnp.float32, rngs: nnx.Rngs):
    self.patch_embed = layers.TubeletEmbed((1, patch_size, patch_size), 3, width, use_bias=False,
                                           dtype=dtype, rngs=rngs)
    _, h, w = self.patch_embed.grid((1, 1, image_size, image_size, 3))
    self.grid = (h, w)
    self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    self.pos_embed = layers.LearnedPosEmbed(1 + h * w, width, rngs=rngs)
    self.norm_pre = layers.LayerNorm(width, eps=NORM_EPS, rngs=rngs)
    self.blocks = nnx.List([
        layers.Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, k_bias=True,
                     quick_gelu=True, norm_eps=NORM_EPS, drop_path=rate, remat=remat,
                     dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)
    ])
    self.norm = layers.LayerNorm(width, eps=NORM_EPS, rngs=rngs)
    self.proj = layers.Dense(width, proj_dim, ("embed", None), use_bias=False, dtype=dtype,
                             rngs=rngs) if proj_dim else None
    self.feature_dim = proj_dim or width  # width of `features`

  def embed(self, video):
    """The first block's input [B T, 1 + S, D]: patches + CLS + positions, then ln_pre."""
    b, t = video.shape[:2]
    x = self.patch_embed(video)  # [B, T S, D], time-major
    x = x.reshape(b * t, -1, x.shape[-1])
    if x.shape[1] + 1 != self.pos_embed.embedding.shape[0]:
      raise ValueError(f"CLIP was built for {self.grid[0]}x{self.grid[1]} patches per frame, got "
                       f"{x.shape[1]}: set config.data.crop_size to the model's image size")
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b * t, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.table().astype(x.dtype)
    return self.norm_pre(x)

  def features(self, x):
    """Per-frame features [B T, feature_dim] of the last block's tokens: the CLS token after
    ln_post, projected when the tower has a projection."""
    x = self.norm(x[:, 0])
    return x if self.proj is None else self.proj(x)

  def __call__(self, video, *, key=None):
    """{"tokens": the last block's tokens [B, T, 1 + S, D] (before ln_post; HF's
    last_hidden_state), "pooled": post-LN CLS [B, T, D] (HF's pooler_output), "features":
    [B, T, feature_dim] (`features`)}. `key` drives drop path (None: off)."""
    b, t = video.shape[:2]
    x = self.embed(video)
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    pooled = self.norm(x[:, 0])
    features = pooled if self.proj is None else self.proj(pooled)
    return {"tokens": x.reshape(b, t, *x.shape[1:]), "pooled": pooled.reshape(b, t, -1),
            "features": features.reshape(b, t, -1)}
