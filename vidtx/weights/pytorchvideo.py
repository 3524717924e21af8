"""pytorchvideo's video networks (`pytorchvideo.models`, 0.1.5), and PySlowFast's
(facebookresearch/SlowFast) of the same architectures, into vidtx's families, BatchNorm running
statistics included.

- `RESNET`: `create_resnet` networks (hub `slow_r50`, `i3d_r50`; their model-zoo `.pyth` files
  hold the same names under {"model_state": ...}) into vidtx.models.resnet3d. pytorchvideo's
  `Net` numbers its parts `blocks.<k>`: the stem (`blocks.0.conv`, `blocks.0.norm`), then each
  stage's `blocks.<k>.res_blocks.<j>` (`branch2.conv_a` / `norm_a`, `conv_b` / `norm_b`,
  `conv_c` / `norm_c`; the shortcut `branch1_conv` / `branch1_norm`), I3D's temporal max pool
  after the first stage (a block without parameters, so the later stages and the head move up
  one), and the head (`blocks.<last>.proj`).
- `PYSLOWFAST_RESNET`: PySlowFast's `ResNet` (MODEL.ARCH slow or i3d; its `.pyth` files hold
  {"model_state": ...}) into the same family: `s1.pathway0_stem.conv` / `.bn` is the stem,
  `s<i + 2>.pathway0_res<j>` block j of stage i (`branch2.a` / `a_bn`, `b` / `b_bn`, `c` /
  `c_bn`; the shortcut `branch1` / `branch1_bn`), `head.projection` the head. One pathway only:
  a SlowFast checkpoint (`pathway1_*`) is not this layout.
- `SLOWFAST`: `create_slowfast` networks (hub `slowfast_r50`, `slowfast_r101`,
  `slowfast_16x8_r101_50_50`; their `.pyth` files under {"model_state": ...}) into
  vidtx.models.slowfast. `blocks.0` holds both stems (`multipathway_blocks.0` Slow, `.1` Fast,
  each `conv` / `norm`) and the first lateral fusion (`multipathway_fusion.conv_fast_to_slow` /
  `norm`); `blocks.<i + 1>` stage i of both pathways (`multipathway_blocks.<p>.res_blocks.<j>`,
  named as above) and, but for the last stage, the fusion after it; then a pooling block without
  parameters and the head (`blocks.6.proj`).
- `PYSLOWFAST_SLOWFAST`: PySlowFast's `SlowFast` (MODEL.ARCH slowfast; `.pyth` files): the
  stems `s1.pathway0_stem` / `s1.pathway1_stem`, the fusions `s<i + 1>_fuse` (`conv_f2s` /
  `bn`), stage i's blocks `s<i + 2>.pathway<p>_res<j>` (named as in `PYSLOWFAST_RESNET`), the
  head `head.projection`. The model zoo's Caffe2 `.pkl` files are another format.
"""

from vidtx.weights import Source, tables

# A stem (ResNetBasicStem) and a residual block (ResBlock around a BottleneckBlock).
STEM = {"conv": "conv", "norm": "norm"}
BOTTLENECK = {
    "a/conv": "branch2.conv_a", "a/norm": "branch2.norm_a",
    "b/conv": "branch2.conv_b", "b/norm": "branch2.norm_b",
    "c/conv": "branch2.conv_c", "c/norm": "branch2.norm_c",
    "shortcut/conv": "branch1_conv", "shortcut/norm": "branch1_norm",
}


def resnet_block_index(stage: int, time_pool: bool) -> int:
  """k of `blocks.<k>` holding stage `stage` (0: res2) of a `create_resnet` network: after the
  stem, and after the temporal pool that I3D puts behind the first stage."""
  return 1 + stage + (time_pool and stage > 0)


def _convert_resnet(reader, target, model):
  out = tables.walk(reader, {"stem": tables.Within("blocks.0.", STEM)}, target)
  out["stages"] = {
      i: tables.Blocks(f"blocks.{resnet_block_index(i, model.time_pool)}.res_blocks.{{}}",
                       BOTTLENECK).read(reader, "", stage, f"stages/{i}")
      for i, stage in target["stages"].items()}
  head = resnet_block_index(len(target["stages"]), model.time_pool)
  out.update(tables.walk(reader, {"head": f"blocks.{head}.proj"}, target))
  return out


RESNET = Source(name="pytorchvideo ResNet",
                keys="'blocks.0.conv.weight', 'blocks.1.res_blocks.0.branch2.conv_a...'",
                detect=lambda keys: "blocks.0.conv.weight" in keys
                and any(k.startswith("blocks.1.res_blocks.") for k in keys),
                convert=_convert_resnet)


# PySlowFast's ResNetBasicStem and ResBlock around a BottleneckTransform.
PYSLOWFAST_STEM = {"conv": "conv", "norm": "bn"}
PYSLOWFAST_BOTTLENECK = {
    "a/conv": "branch2.a", "a/norm": "branch2.a_bn",
    "b/conv": "branch2.b", "b/norm": "branch2.b_bn",
    "c/conv": "branch2.c", "c/norm": "branch2.c_bn",
    "shortcut/conv": "branch1", "shortcut/norm": "branch1_bn",
}


def _convert_pyslowfast_resnet(reader, target, model):
  del model  # the temporal pool has no parameters, and stages are named, not numbered
  out = tables.walk(reader, {"stem": tables.Within("s1.pathway0_stem.", PYSLOWFAST_STEM),
                             "head": "head.projection"}, target)
  out["stages"] = {
      i: tables.Blocks(f"s{i + 2}.pathway0_res{{}}", PYSLOWFAST_BOTTLENECK).read(
          reader, "", stage, f"stages/{i}")
      for i, stage in target["stages"].items()}
  return out


PYSLOWFAST_RESNET = Source(
    name="PySlowFast ResNet (slow, i3d)",
    keys="'s1.pathway0_stem.conv.weight', 's2.pathway0_res0.branch2.a...', 'head.projection...'",
    detect=lambda keys: "s1.pathway0_stem.conv.weight" in keys
    and not any(k.startswith("s1.pathway1_") for k in keys),
    convert=_convert_pyslowfast_resnet)


# SlowFast (vidtx.models.slowfast): two pathways of the ResNet pieces above, and the lateral
# Fast->Slow fusions (pytorchvideo's FuseFastToSlow, PySlowFast's FuseFastToSlow).
FUSION = {"conv": "conv_fast_to_slow", "norm": "norm"}
PYSLOWFAST_FUSION = {"conv": "conv_f2s", "norm": "bn"}
PATHWAYS = ("slow", "fast")  # pathway 0 and 1 of both layouts


def _convert_slowfast(reader, target, model):
  del model  # the stages' count gives the head's block
  stages = len(target["slow"]["stages"])
  out = tables.walk(reader, {
      **{f"{name}/stem": tables.Within(f"blocks.0.multipathway_blocks.{p}.", STEM)
         for p, name in enumerate(PATHWAYS)},
      "fuse": tables.Blocks("blocks.{}.multipathway_fusion", FUSION),
      # After the stages, a PoolConcatPathway (no parameters), then the head.
      "head": f"blocks.{stages + 2}.proj"}, target)
  for p, name in enumerate(PATHWAYS):
    out[name]["stages"] = {
        i: tables.Blocks(f"blocks.{i + 1}.multipathway_blocks.{p}.res_blocks.{{}}",
                         BOTTLENECK).read(reader, "", stage, f"{name}/stages/{i}")
        for i, stage in target[name]["stages"].items()}
  return out


SLOWFAST = Source(
    name="pytorchvideo SlowFast",
    keys="'blocks.0.multipathway_blocks.0.conv.weight', "
         "'blocks.0.multipathway_fusion.conv_fast_to_slow.weight', ...",
    detect=lambda keys: "blocks.0.multipathway_blocks.0.conv.weight" in keys,
    convert=_convert_slowfast)


def _convert_pyslowfast_slowfast(reader, target, model):
  del model  # the pathway pools after res2 have no parameters
  out = tables.walk(reader, {
      **{f"{name}/stem": tables.Within(f"s1.pathway{p}_stem.", PYSLOWFAST_STEM)
         for p, name in enumerate(PATHWAYS)},
      "head": "head.projection"}, target)
  out["fuse"] = {i: tables.walk(reader, PYSLOWFAST_FUSION, fuse, f"fuse/{i}/", f"s{i + 1}_fuse.")
                 for i, fuse in target["fuse"].items()}
  for p, name in enumerate(PATHWAYS):
    out[name]["stages"] = {
        i: tables.Blocks(f"s{i + 2}.pathway{p}_res{{}}", PYSLOWFAST_BOTTLENECK).read(
            reader, "", stage, f"{name}/stages/{i}")
        for i, stage in target[name]["stages"].items()}
  return out


PYSLOWFAST_SLOWFAST = Source(
    name="PySlowFast SlowFast",
    keys="'s1.pathway0_stem.conv.weight', 's1.pathway1_stem.conv.weight', "
         "'s1_fuse.conv_f2s.weight', 's2.pathway0_res0.branch2.a...', 'head.projection...'",
    detect=lambda keys: "s1.pathway1_stem.conv.weight" in keys,
    convert=_convert_pyslowfast_slowfast)
