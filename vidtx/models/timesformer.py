"""TimeSformer (Bertasius et al., 2021): a ViT over frames with divided space-time attention.

Follows facebookresearch/TimeSformer `timesformer/models/vit.py` (SYSTEMS.md §6):
- Each frame is cut into 2-D patches (a Conv2d, here a 1 x p x p tubelet) and a CLS token is
  prepended. A learned spatial position embedding (1 + S rows, CLS first) is shared by all
  frames; a learned `time_embed` (T rows) is added to the patch tokens, not to CLS.
- Tokens are in the reference's space-major order: CLS, then n = s T + t.
- `attention`:
  - "divided": each block runs time, then space, then the MLP. The temporal step (own LN and
    attention, then `temporal_fc`, zero-initialised) sees each position's T tokens, CLS left
    out. The spatial step sees each frame's tokens with CLS, and CLS takes the mean of its T
    outputs (`layers.attend_within_frames`).
  - "joint": joint_space_time, every token attends to every token.
  - "space_only": no time embedding; the frames are apart through all blocks (folded into the
    batch, each with its own CLS), averaged at the end before the final LN.
- Head: final LN, then CLS -> Linear.

LayerNorm eps is 1e-6 and every qkv has a full (q, k, v) bias, as in the reference. Drop path is
per clip here; the reference drops per frame (space) and per position (time) because it folds
those into its batch axis.
"""

import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx.models import layers, vit
from vidtx.models.family import Family
from vidtx.weights import timesformer as timesformer_weights

ATTENTIONS = ("divided", "joint", "space_only")


class TimeSformer(nnx.Module):

  def __init__(self, *, num_classes: int, num_frames: int, image_size: int, patch_size: int = 16,
               width: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, attention: str = "divided", clip_style: bool = False,
               drop_path: float = 0.0,
               head_init_scale: float = 1.0, remat: str = "none", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if attention not in ATTENTIONS:
      raise ValueError(f"config.model.attention={attention!r}: TimeSformer takes one of "
                       f"{ATTENTIONS}")
    self.attention, self.num_frames = attention, num_frames
    self.patch_embed = layers.TubeletEmbed((1, patch_size, patch_size), 3, width,
                                           use_bias=not clip_style, dtype=dtype, rngs=rngs)
    _, h, w = self.patch_embed.grid((1, num_frames, image_size, image_size, 3))
    self.num_patches = h * w  # per frame
    self.cls_token = layers.param(rngs, layers.trunc_normal, (1, 1, width), (None, None, "embed"))
    self.pos_embed = layers.LearnedPosEmbed(1 + self.num_patches, width, rngs=rngs)
    space_only = attention == "space_only"
    # Zeros, as the reference: a model inflated from an image ViT starts as that model.
    self.time_embed = None if space_only else layers.LearnedPosEmbed(
        num_frames, width, init=layers.zeros, rngs=rngs)
    # clip_style: CLIP's conventions, as vit.Encoder's (ln_pre, QuickGELU, eps 1e-5).
    eps = vit.norm_eps(clip_style)
    self.norm_pre = layers.LayerNorm(width, eps=eps, rngs=rngs) if clip_style else None
    layout = layers.TokenLayout(frames=num_frames, cls_token=True, space_major=True)
    self.blocks = nnx.List([
        layers.Block(width, num_heads, attention="joint" if space_only else attention,
                     layout=layout, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, k_bias=True,
                     quick_gelu=clip_style, norm_eps=eps, drop_path=rate, remat=remat,
                     dtype=dtype, rngs=rngs)
        for rate in layers.drop_path_rates(drop_path, depth)
    ])
    self.norm = layers.LayerNorm(width, eps=eps, rngs=rngs)
    head_init = lambda key, shape, dtype: layers.trunc_normal(key, shape, dtype) * head_init_scale
    self.head = layers.Dense(width, num_classes, ("embed", "classes"), kernel_init=head_init,
                             rngs=rngs)

  def tokens(self, video):
    """The blocks' input: [B, 1 + S T, D] (CLS, then space-major), or for space_only
    [B T, 1 + S, D] (each frame a clip of its own)."""
    b, t = video.shape[:2]
    if t != self.num_frames:
      raise ValueError(f"TimeSformer was built for {self.num_frames} frames (its time "
                       f"embedding), got a clip of {t}: set config.data.num_frames")
    x = self.patch_embed(video)  # [B, T S, D], time-major
    x = x.reshape(b, t, self.num_patches, x.shape[-1])
    pos = self.pos_embed.table().astype(x.dtype)
    x = x + pos[1:]  # the same spatial position embedding in every frame
    cls = self.cls_token[...].astype(x.dtype) + pos[:1]
    if self.time_embed is None:
      x = x.reshape(b * t, self.num_patches, -1)
    else:
      x = x + self.time_embed.table().astype(x.dtype)[:, None]
      x = jnp.swapaxes(x, 1, 2).reshape(b, self.num_patches * t, -1)  # space-major
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
    return x if self.norm_pre is None else self.norm_pre(x)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3]; `key` drives drop path and
    is only used when `train`. TimeSformer sees every token: `keep` must be None."""
    if keep is not None:
      raise ValueError("TimeSformer sees every token: set config.model.masking='none'")
    key = key if train else None
    x = self.tokens(video)
    for block, block_key in zip(self.blocks, layers.block_keys(key, len(self.blocks))):
      x = block(x, block_key)
    if self.time_embed is None:  # space_only: average the frames
      x = x.reshape(video.shape[0], self.num_frames, *x.shape[1:]).mean(axis=1)
    return self.head(self.norm(x)[:, 0]).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> TimeSformer:
  width, depth, heads = vit.size(model_config)
  _, patch, _ = model_config.patch_size  # (1, p, p), checked by _check
  return TimeSformer(
      num_classes=data_config.num_classes, num_frames=data_config.num_frames,
      image_size=data_config.crop_size, patch_size=patch, width=width, depth=depth,
      num_heads=heads, mlp_ratio=model_config.mlp_ratio, qkv_bias=model_config.qkv_bias,
      attention=model_config.attention, clip_style=model_config.clip_style,
      drop_path=model_config.drop_path,
      head_init_scale=model_config.head_init_scale, remat=model_config.remat,
      dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def _check(config: ml_collections.ConfigDict) -> None:
  vit.check_frame_patches(config, "TimeSformer", "(1, 16, 16)")
  vit.check_heads(config)


def _init_names(name: str) -> tuple[str, ...]:
  # TimeSformer keeps the reference's flat names; image ViTs have theirs under "encoder/".
  # Its temporal_fc starts at zero, so a copied temporal attention adds nothing at first.
  names = (name, *layers.temporal_from_spatial(name))
  return tuple(n for own in names for n in (own, f"encoder/{own}"))


FAMILY = Family(
    name="timesformer",
    build=build,
    sizes=vit.SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
           "clip_style", "attention", "remat", "drop_path", "head_init_scale", "dtype"),
    check=_check,
    # "divided" is the paper's; "space_only" averages the frames, each encoded apart.
    attentions=ATTENTIONS,
    tubelets=True,
    converters=timesformer_weights.SOURCES,
    image_model=vit.image_model,
    init_names=_init_names,
    rollout_attentions=("divided", "joint"),
)
