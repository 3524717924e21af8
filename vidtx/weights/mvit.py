"""MViT and MViTv2 checkpoints into the mvit family: torchvision's `MViT` (`mvit_v1_b`,
`mvit_v2_s`: `conv_proj`, `pos_encoding.*`, `blocks.<i>.attn.pool_q.pool`, ...) and PySlowFast's
`MViT` (`.pyth` files, {"model_state": ...}: `patch_embed.proj`, `pos_embed_spatial`,
`blocks.<i>.attn.pool_q` with `norm_q`, `head.projection`, ...).

Both layouts hold the same modules under other names; the model's structure (v1 or v2, where
stages start, the pooling kernels) comes from the config, and every key must fit it.
"""

import dataclasses

from vidtx.weights import Source, tables


@dataclasses.dataclass(frozen=True)
class PoolingAttention:
  """Our `mvit.PoolingAttention`'s projections (qkv [C_in, 3, heads, head_dim], q/k/v biases,
  proj [heads, head_dim, C_out], proj_bias) from torch's fused qkv Linear [3 C_out, C_in]
  (rows q, k, v, each head-major) and output Linear [C_out, C_out]. Unlike
  `tables.Attention`, C_in may differ from C_out (MViTv2 widens in the attention)."""
  qkv: str
  proj: str

  def read(self, reader, prefix, target, path):
    qkv_shape = tables.shape(target["qkv"])
    dim_in, _, heads, head_dim = qkv_shape
    inner = heads * head_dim
    key = prefix + self.qkv
    weight = reader.take(f"{key}.weight", (3 * inner, dim_in), f"{path}/qkv")
    out = {"qkv": None if weight is None else weight.T.reshape(qkv_shape)}
    if "q_bias" in target:
      names = ("q_bias", "k_bias", "v_bias")
      bias = reader.take(f"{key}.bias", (3 * inner,), *(f"{path}/{n}" for n in names))
      for i, name in enumerate(names):
        out[name] = None if bias is None else bias[i * inner:(i + 1) * inner]
    proj_shape = tables.shape(target["proj"])
    weight = reader.take(f"{prefix}{self.proj}.weight", (proj_shape[-1], inner), f"{path}/proj")
    out["proj"] = None if weight is None else weight.T.reshape(proj_shape)
    out["proj_bias"] = reader.take(f"{prefix}{self.proj}.bias",
                                   tables.shape(target["proj_bias"]), f"{path}/proj_bias")
    return out


def _block(attention, pool, mlp, proj):
  """A block's table: `pool(x)` gives the (conv, norm) keys of pool x in q, k, v."""
  table = {"norm1": "norm1", "attn": attention, "norm2": "norm2",
           "mlp/fc1": mlp[0], "mlp/fc2": mlp[1], "proj": proj}
  for x in "qkv":
    conv, norm = pool(x)
    table[f"attn/pool_{x}/conv"] = conv
    table[f"attn/pool_{x}/norm"] = norm
  for axis in "thw":
    table[f"attn/rel_pos_{axis}"] = f"attn.rel_pos_{axis}"
  return table


TORCHVISION_TABLE = {
    "patch_embed": "conv_proj",
    "cls_token": tables.Unbatched("pos_encoding.class_token"),
    "pos_embed": tables.Unbatched("pos_encoding.spatial_pos"),
    "time_embed": tables.Unbatched("pos_encoding.temporal_pos"),
    "cls_pos": tables.Unbatched("pos_encoding.class_pos"),
    "blocks": tables.Blocks("blocks.{}", _block(
        PoolingAttention("attn.qkv", "attn.project.0"),
        lambda x: (f"attn.pool_{x}.pool", f"attn.pool_{x}.norm_act.0"),
        ("mlp.0", "mlp.3"), "project")),
    "norm": "norm",
    "head": "head.1",
}

PYSLOWFAST_TABLE = {
    "patch_embed": "patch_embed.proj",
    "cls_token": "cls_token",
    # Separable: pos_embed_spatial, pos_embed_temporal, pos_embed_class; joint: pos_embed.
    "pos_embed": "pos_embed_spatial",
    "time_embed": "pos_embed_temporal",
    "cls_pos": "pos_embed_class",
    "blocks": tables.Blocks("blocks.{}", _block(
        PoolingAttention("attn.qkv", "attn.proj"),
        lambda x: (f"attn.pool_{x}", f"attn.norm_{x}"), ("mlp.fc1", "mlp.fc2"), "proj")),
    "norm": "norm",
    "head": "head.projection",
}


def _convert_torchvision(reader, target, model):
  if "time_embed" not in target and "pos_embed" in target:
    raise ValueError("torchvision's MViT has separable position embeddings (v1) or none (v2): "
                     "convert it with config.model.mvit.pos_embed='' or 'separable'")
  return tables.walk(reader, TORCHVISION_TABLE, target)


def _convert_pyslowfast(reader, target, model):
  table = dict(PYSLOWFAST_TABLE)
  if "pos_embed" in target and "time_embed" not in target:  # joint: one table, CLS row first
    table["pos_embed"] = "pos_embed"
  return tables.walk(reader, table, target)


def _is_pyslowfast(keys) -> bool:
  # VideoMAE's files also have patch_embed.proj and blocks.<i>.attn.qkv: look for MViT's own.
  keys = set(keys)
  return "patch_embed.proj.weight" in keys and (
      "head.projection.weight" in keys
      or any(".attn.pool_k" in k or ".attn.rel_pos_" in k or k.startswith("pos_embed_spatial")
             for k in keys))


TORCHVISION = Source(
    name="torchvision MViT", keys="'conv_proj...', 'pos_encoding...', 'blocks.0.attn.qkv...'",
    detect=lambda keys: "conv_proj.weight" in keys and any(
        k.startswith("pos_encoding.") for k in keys),
    convert=_convert_torchvision)
PYSLOWFAST = Source(
    name="PySlowFast MViT", keys="'patch_embed.proj...', 'blocks.0.attn.pool_k...', "
    "'head.projection...'", detect=_is_pyslowfast, convert=_convert_pyslowfast)
SOURCES = (TORCHVISION, PYSLOWFAST)
