"""VTN (Neimark et al., 2021): a 2-D ViT per frame, a Longformer over the frame features, an MLP
head on the Longformer's CLS token.

Follows bomri/SlowFast `VTN` and `vtn_helper.VTNLongformerModel` (SYSTEMS.md §5):
- Backbone: timm's `vit_base_patch16_224` without its classifier, run on every frame (frames
  folded into the batch): 1 x p x p patches, CLS, learned position embedding, pre-LN blocks with
  q, k and v biases, final LN (eps 1e-6); the frame's feature is its CLS token. It is our
  `vit.Encoder` (one-frame clips) + `norm`, named as the image ViT that init_from reads.
- Temporal encoder: HF `LongformerModel` with `inputs_embeds`, as `TemporalEncoder` below:
  [CLS, f_1 ... f_T] + a learned position embedding + a token-type embedding (1 for CLS, 0 for
  frames), LN, dropout; then post-LN BERT layers whose attention is Longformer's: local
  sliding-window attention for frames, global attention for CLS. LayerNorm eps 1e-12, exact
  GELU, dropout `dropout` on the hidden states and on the attention probabilities.
- Head: LN (eps 1e-5) -> Linear(D, D) -> GELU -> Dropout(head_dropout) -> Linear(D, classes).

Positions. The reference indexes the position table with the *sampled frame indices* of the
video, taken mod 286 (CLS: 286, padding: 287; 288 rows). Our pipeline gives clips, not their
frame indices, so the model computes them as start + frame_stride * i (mod 286): at
evaluation start = 0, which is the reference's whole-video view (all frames from frame 0); in
training start is drawn uniformly from [0, 286) with the model's key, standing in for the
sampler's random start, so that every row of the table is trained and a whole-video
evaluation at stride 1 finds trained rows. Row 287 is kept (checkpoints have it) but unused:
we never pad.

Window. HF Longformer's `attention_window` counts both sides: each layer's
`one_sided_attn_window_size = attention_window // 2`, so the reference's [18, 18, 18] lets a
frame attend to 9 frames on each side (and itself), plus the global CLS; its padding helper's
multiple of 2 x 18 only pads more. `window` here is the one-sided count: 9.

Attention as a banded mask. Longformer computes the band in chunks to stay linear in the
sequence length; clips here have at most a few hundred tokens, so a [T+1, T+1] mask over full
attention gives the same numbers more simply. A frame sees the frames within `window` and the
CLS (once, through its global key, as HF removes global tokens from the window); the CLS row is
recomputed with the separate global projections over all tokens.

The model takes any number of frames (the backbone is per frame, positions wrap mod 286): a
model trained on 16-frame clips evaluates whole videos, e.g. 250 frames at stride 1 (the
`:whole_video` variant of configs/vtn_k400.py), from the same checkpoint.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidtx import errors
from vidtx.models import layers, vit
from vidtx.models.family import Family
from vidtx.weights import vtn as vtn_weights

NUM_POSITIONS = 288  # the reference's max_position_embeddings
CLS_POSITION = NUM_POSITIONS - 2  # 286; frame indices are taken mod 286
LONGFORMER_EPS = 1e-12  # LongformerConfig's layer_norm_eps, which the reference keeps


def _split(key, n):
  return list(jax.random.split(key, n)) if key is not None else [None] * n


def _attend(q, k, v, mask, rate: float, key):
  """Softmax attention of q [B, Q, H, E] over k, v [B, K, H, E]; `mask` [Q, K] (None: all).
  Logits and softmax in float32; dropout on the probabilities, as Longformer."""
  logits = jnp.einsum("bqhe,bkhe->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  probs = layers.dropout(jax.nn.softmax(logits, axis=-1), rate, key).astype(v.dtype)
  return jnp.einsum("bhqk,bkhe->bqhe", probs, v)


def local_mask(num_tokens: int, window: int):
  """[N, N] bool: which keys each query's local attention sees. Token 0 is the global CLS: every
  token sees it; frames see the frames at most `window` away."""
  i = jnp.arange(num_tokens)
  band = jnp.abs(i[:, None] - i[None, :]) <= window
  return (band & (i[None, :] > 0)) | (i[None, :] == 0)


class LongformerAttention(nnx.Module):
  """Longformer self-attention for one global token (index 0) followed by local tokens, with
  HF's projections (query/key/value for local attention, *_global for the global token's row)
  and the output projection shared by both."""

  def __init__(self, dim: int, num_heads: int, *, window: int, dropout: float, dtype,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
    self.num_heads, self.window, self.dropout = num_heads, window, dropout
    dense = lambda axes: layers.Dense(dim, dim, axes, dtype=dtype,
                                      kernel_init=layers.trunc_normal, rngs=rngs)
    self.query, self.key, self.value = (dense(("embed", "heads")) for _ in range(3))
    self.query_global, self.key_global, self.value_global = (dense(("embed", "heads"))
                                                             for _ in range(3))
    self.proj = dense(("heads", "embed"))

  def __call__(self, x, key=None):
    b, n, d = x.shape
    heads = lambda y: y.reshape(*y.shape[:2], self.num_heads, -1)
    local_key, global_key = _split(key, 2)
    out = _attend(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                  local_mask(n, self.window), self.dropout, local_key)
    cls = _attend(heads(self.query_global(x[:, :1])), heads(self.key_global(x)),
                  heads(self.value_global(x)), None, self.dropout, global_key)
    out = jnp.concatenate([cls, out[:, 1:]], axis=1)
    return self.proj(out.reshape(b, n, d))


class LongformerLayer(nnx.Module):
  """Post-LN BERT layer: x = LN1(x + Drop(Attn x)); x = LN2(x + Drop(MLP x))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, window: int,
               dropout: float, dtype, rngs: nnx.Rngs):
    self.dropout = dropout
    self.attn = LongformerAttention(dim, num_heads, window=window, dropout=dropout, dtype=dtype,
                                    rngs=rngs)
    self.norm1 = layers.LayerNorm(dim, eps=LONGFORMER_EPS, rngs=rngs)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.norm2 = layers.LayerNorm(dim, eps=LONGFORMER_EPS, rngs=rngs)

  def __call__(self, x, key=None):
    attn_key, k1, k2 = _split(key, 3)
    x = self.norm1(x + layers.dropout(self.attn(x, attn_key), self.dropout, k1))
    return self.norm2(x + layers.dropout(self.mlp(x), self.dropout, k2))


class TemporalEncoder(nnx.Module):
  """HF LongformerModel over [CLS, frame features]: embeddings (input + position + token type,
  LN, dropout) and `depth` Longformer layers. Returns all tokens, CLS first."""

  def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float, window: int,
               dropout: float, dtype, rngs: nnx.Rngs):
    self.dropout = dropout
    # The reference's CLS is torch.randn: standard normal.
    self.cls_token = layers.param(rngs, nnx.initializers.normal(1.0), (1, 1, dim),
                                  (None, None, "embed"))
    self.pos_embed = layers.LearnedPosEmbed(NUM_POSITIONS, dim, rngs=rngs)
    self.type_embed = layers.param(rngs, layers.trunc_normal, (2, dim), (None, "embed"))
    self.norm = layers.LayerNorm(dim, eps=LONGFORMER_EPS, rngs=rngs)
    self.blocks = nnx.List([
        LongformerLayer(dim, num_heads, mlp_ratio=mlp_ratio, window=window, dropout=dropout,
                        dtype=dtype, rngs=rngs) for _ in range(depth)])

  def __call__(self, frames, positions, key=None):
    """Tokens [B, 1 + T, D] for frame features [B, T, D] at table rows `positions` [T] (or
    [B, T]); CLS takes row CLS_POSITION and token type 1, frames type 0."""
    b, t, d = frames.shape
    table = self.pos_embed.table().astype(frames.dtype)
    types = self.type_embed[...].astype(frames.dtype)
    cls = self.cls_token[...].astype(frames.dtype) + table[CLS_POSITION] + types[1]
    x = frames + table[positions] + types[0]
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    embed_key, *layer_keys = _split(key, 1 + len(self.blocks))
    x = layers.dropout(self.norm(x), self.dropout, embed_key)
    for layer, layer_key in zip(self.blocks, layer_keys):
      x = layer(x, layer_key)
    return x


def frame_positions(num_frames: int, stride: int, start=0):
  """Position-table rows of frames start, start + stride, ... (the reference's sampled frame
  indices mod 286)."""
  return (start + stride * jnp.arange(num_frames)) % CLS_POSITION


class VTN(nnx.Module):

  def __init__(self, *, num_classes: int, image_size: int, patch_size: int = 16,
               width: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, temporal_depth: int = 3, window: int = 9,
               temporal_dropout: float = 0.1, frame_stride: int = 1, head_dropout: float = 0.5,
               drop_path: float = 0.0, remat: str = "none", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if window < 1:
      raise ValueError(f"config.model.vtn.window={window}: a frame must see at least 1 frame "
                       "on each side (the reference: 9)")
    self.frame_stride, self.head_dropout = frame_stride, head_dropout
    self.encoder = vit.Encoder(
        num_frames=1, image_size=image_size, patch_size=(1, patch_size, patch_size), width=width,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, k_bias=True,
        pos_embed="learned", cls_token=True, drop_path=drop_path, remat=remat, dtype=dtype,
        rngs=rngs)
    self.norm = layers.LayerNorm(width, rngs=rngs)
    self.temporal = TemporalEncoder(width, temporal_depth, num_heads, mlp_ratio=mlp_ratio,
                                    window=window, dropout=temporal_dropout, dtype=dtype,
                                    rngs=rngs)
    self.head_norm = layers.LayerNorm(width, eps=1e-5, rngs=rngs)
    self.head_hidden = layers.Dense(width, width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.head = layers.Dense(width, num_classes, ("mlp", "classes"), dtype=dtype, rngs=rngs)

  def frame_features(self, video, key=None):
    """Each frame's CLS feature [B, T, D] for video [B, T, H, W, 3]."""
    b, t = video.shape[:2]
    frames = video.reshape(b * t, 1, *video.shape[2:])
    return self.norm(self.encoder(frames, key=key))[:, 0].reshape(b, t, -1)

  def __call__(self, video, *, train: bool = False, key=None, keep=None):
    """(logits [B, classes] float32, {}) for video [B, T, H, W, 3] of any T. `key` drives drop
    path, dropout and the clip's start position and is only used when `train`."""
    if keep is not None:
      raise ValueError("VTN sees every frame: set config.model.masking='none'")
    key = key if train else None
    backbone_key, start_key, temporal_key, head_key = _split(key, 4)
    x = self.frame_features(video, backbone_key)
    start = 0 if start_key is None else jax.random.randint(start_key, (), 0, CLS_POSITION)
    positions = frame_positions(x.shape[1], self.frame_stride, start)
    x = self.temporal(x, positions, temporal_key)[:, 0]
    x = jax.nn.gelu(self.head_hidden(self.head_norm(x)), approximate=False)
    x = layers.dropout(x, self.head_dropout, head_key)
    return self.head(x).astype(jnp.float32), {}


def build(model_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
          rngs: nnx.Rngs) -> VTN:
  s = model_config.vtn
  width, depth, heads = vit.size(model_config)
  _, patch, _ = model_config.patch_size  # (1, p, p), checked by _check
  return VTN(
      num_classes=data_config.num_classes, image_size=data_config.crop_size, patch_size=patch,
      width=width, depth=depth, num_heads=heads, mlp_ratio=model_config.mlp_ratio,
      qkv_bias=model_config.qkv_bias, temporal_depth=s.temporal_depth,
      window=s.window, temporal_dropout=s.dropout,
      frame_stride=data_config.frame_stride, head_dropout=model_config.head_dropout,
      drop_path=model_config.drop_path, remat=model_config.remat,
      dtype=jnp.dtype(model_config.dtype), rngs=rngs)


def section() -> ml_collections.ConfigDict:
  # A 2-D ViT (model.patch_size (1, p, p)) per frame, then a Longformer (the ViT's width and
  # heads) over the frame features, whose positions are the frames' indices:
  # start + data.frame_stride x i.
  s = ml_collections.ConfigDict()
  s.temporal_depth = 3  # Longformer layers (the reference: 3)
  s.window = 9  # frames each frame attends to on each side (HF attention_window=18)
  s.dropout = 0.1  # Longformer's hidden and attention-probability dropout
  return s


def _check(config: ml_collections.ConfigDict) -> None:
  s = config.model.vtn
  vit.check_frame_patches(config, "VTN", "(1, 16, 16) for ViT-B/16")
  vit.check_heads(config)
  if s.temporal_depth < 1:
    errors.fail("model.vtn.temporal_depth", s.temporal_depth, "VTN's Longformer needs at least "
                "1 layer (the reference: 3)")
  if s.window < 1:
    errors.fail("model.vtn.window", s.window, "a frame must attend to at least 1 frame on each "
                "side (the reference: 9, HF attention_window=18)")
  if not 0 <= s.dropout < 1:
    errors.fail("model.vtn.dropout", s.dropout, "must be in [0, 1)")


FAMILY = Family(
    name="vtn",
    build=build,
    sizes=vit.SIZES,
    reads=("size", "width", "depth", "num_heads", "mlp_ratio", "patch_size", "qkv_bias",
           "attention", "remat", "drop_path", "head_dropout", "dtype"),
    section=section,
    check=_check,
    # A ViT per frame; the Longformer over the frames connects them.
    attentions=("space_only",),
    tubelets=True,
    layer_decay_depth=lambda model_config: vit.size(model_config)[1],
    converters=(vtn_weights.PYSLOWFAST, vtn_weights.LONGFORMER.into("temporal")),
    image_model=vit.image_model,
)
