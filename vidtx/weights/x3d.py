"""X3D checkpoints into the x3d family (vidtx.models.x3d), BatchNorm running statistics included.

- `PYTORCHVIDEO`: `pytorchvideo.models.x3d.create_x3d` state dicts (its hub's X3D_XS/S/M/L.pyth
  files, {"model_state": ...}): `blocks.0` the stem (`conv.conv_t` is the 1x3x3 spatial conv and
  `conv.conv_xy` the depth-wise 5x1x1 temporal one: pytorchvideo's Conv2plus1d slots, filled the
  other way round), `blocks.<1..4>.res_blocks.<j>` the bottleneck blocks (`branch1_conv`,
  `branch1_norm` the shortcut; `branch2.norm_b` is nn.Sequential(BatchNorm, SE) with the SE's
  convs at `norm_b.1.block.0` and `.2`), `blocks.5` the head (`pool.pre_conv`, `pool.pre_norm`,
  `pool.post_conv`, `proj`).
- `PYSLOWFAST`: PySlowFast's `X3D` (`slowfast/models/video_model_builder.py`; its model zoo's
  x3d_xs.pyth ... x3d_l.pyth, {"model_state": ...}): `s1.pathway0_stem` (`conv_xy` the spatial
  conv, `conv` the depth-wise temporal one, `bn`), `s<i + 2>.pathway0_res<j>` the blocks
  (`branch1`, `branch1_bn` the shortcut; `branch2.{a, a_bn, b, b_bn, se.fc1, se.fc2, c, c_bn}`),
  `head.{conv_5, conv_5_bn, lin_5, projection}`. Its blocks put a BatchNorm after every
  shortcut conv, the first block's (24 -> 24 channels at stride 2) too, which the model has
  with model.x3d.shortcut_norm="always".
"""

from vidtx.weights import Source, tables

BLOCK = {
    "conv_a": "branch2.conv_a",
    "norm_a": "branch2.norm_a",
    "conv_b": "branch2.conv_b",
    "norm_b": "branch2.norm_b.0",
    "se/reduce": "branch2.norm_b.1.block.0",  # block.1 is the ReLU, block.3 the sigmoid
    "se/expand": "branch2.norm_b.1.block.2",
    "conv_c": "branch2.conv_c",
    "norm_c": "branch2.norm_c",
    "shortcut": "branch1_conv",
    "shortcut_norm": "branch1_norm",
}
STEM = {"spatial": "conv.conv_t", "temporal": "conv.conv_xy", "norm": "norm"}
HEAD = {"pre_conv": "pool.pre_conv", "pre_norm": "pool.pre_norm",
        "post_conv": "pool.post_conv", "proj": "proj"}


def _convert(reader, target, model):
  del model
  stages = target["stages"]
  return {
      "stem": tables.walk(reader, STEM, target["stem"], "stem/", "blocks.0."),
      # blocks.0 is the stem, blocks.1-4 the stages, then the head.
      "stages": {i: tables.Blocks(f"blocks.{i + 1}.res_blocks.{{}}", BLOCK).read(
          reader, "", stage, f"stages/{i}") for i, stage in stages.items()},
      "head": tables.walk(reader, HEAD, target["head"], "head/", f"blocks.{len(stages) + 1}."),
  }


PYTORCHVIDEO = Source(
    name="pytorchvideo X3D",
    keys="'blocks.0.conv.conv_t.weight', 'blocks.1.res_blocks.0.branch2.conv_a...', "
         "'blocks.5.pool.pre_conv...'",
    detect=lambda keys: "blocks.0.conv.conv_xy.weight" in keys
    and any(k.endswith(".pool.pre_conv.weight") for k in keys),
    convert=_convert)


PYSLOWFAST_BLOCK = {
    "conv_a": "branch2.a",
    "norm_a": "branch2.a_bn",
    "conv_b": "branch2.b",
    "norm_b": "branch2.b_bn",
    "se/reduce": "branch2.se.fc1",
    "se/expand": "branch2.se.fc2",
    "conv_c": "branch2.c",
    "norm_c": "branch2.c_bn",
    "shortcut": "branch1",
    "shortcut_norm": "branch1_bn",
}
PYSLOWFAST_TABLE = {
    "stem": {"spatial": "s1.pathway0_stem.conv_xy", "temporal": "s1.pathway0_stem.conv",
             "norm": "s1.pathway0_stem.bn"},
    "head": {"pre_conv": "head.conv_5", "pre_norm": "head.conv_5_bn", "post_conv": "head.lin_5",
             "proj": "head.projection"},
}


def _convert_pyslowfast(reader, target, model):
  del model
  out = tables.walk(reader, PYSLOWFAST_TABLE, target)
  # PySlowFast numbers the stages from s2 (s1 is the stem).
  out["stages"] = {i: tables.Blocks(f"s{i + 2}.pathway0_res{{}}", PYSLOWFAST_BLOCK).read(
      reader, "", stage, f"stages/{i}") for i, stage in target["stages"].items()}
  first = target["stages"].get(0, {}).get(0, {})
  if ("shortcut" in first and "shortcut_norm" not in first
      and "s2.pathway0_res0.branch1_bn.weight" in reader.arrays):  # then reported unused
    reader.hints.append("PySlowFast's X3D has a BatchNorm after the first block's shortcut "
                        "conv: set config.model.x3d.shortcut_norm='always'")
  return out


PYSLOWFAST = Source(
    name="PySlowFast X3D",
    keys="'s1.pathway0_stem.conv_xy.weight', 's2.pathway0_res0.branch2.a...', "
         "'head.conv_5...'",
    detect=lambda keys: "s1.pathway0_stem.conv_xy.weight" in keys
    and "head.conv_5.weight" in keys,
    convert=_convert_pyslowfast)
