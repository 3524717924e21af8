"""torchvision's video CNNs (`torchvision.models.video`) into the r2plus1d and s3d families,
BatchNorm running statistics included.

- `RESNET`: `VideoResNet` state dicts (r2plus1d_18, r3d_18, mc3_18 and the same layout at other
  depths) into vidtx.models.r2plus1d. torchvision's `stem.0` ... `layer<i>.<j>.conv1.0` ...
  `fc`; a (2+1)D conv is nn.Sequential(spatial conv, BN, ReLU, temporal conv).
- `S3D`: `S3D` state dicts into vidtx.models.s3d: `features.<k>` (the layers in order, max pools
  included, so the mixed blocks are features 5, 6, 8-12, 14, 15) and `classifier.1`. An S3D-G
  model also has self-gating Linears, named as in antoine77340/S3D_HowTo100M's s3dg.py:
  `gating.fc` after conv2c and `features.<k>.gating_b<branch>.fc` in the mixed blocks.
"""

from vidtx.weights import Source, tables


def _block(split: bool) -> dict:
  """A BasicBlock: conv<n>.0 the conv (or the (2+1)D Sequential), conv<n>.1 its BatchNorm."""
  conv = (lambda key: {"spatial": f"{key}.0", "norm": f"{key}.1", "temporal": f"{key}.3"}
          ) if split else (lambda key: key)
  return {"conv1": conv("conv1.0"), "norm1": "conv1.1", "conv2": conv("conv2.0"),
          "norm2": "conv2.1", "downsample/conv": "downsample.0", "downsample/norm": "downsample.1"}


RESNET_TABLE = {
    # BasicStem: Conv3d, BN, ReLU. R2Plus1dStem: Conv3d, BN, ReLU, Conv3d, BN, ReLU.
    "stem/conv": "stem.0",
    "stem/norm": "stem.1",
    "stem/spatial/conv": "stem.0",
    "stem/spatial/norm": "stem.1",
    "stem/temporal/conv": "stem.3",
    "stem/temporal/norm": "stem.4",
    "fc": "fc",
}


def _convert_resnet(reader, target, model):
  del model
  out = tables.walk(reader, RESNET_TABLE, target)
  out["layers"] = {
      i: tables.Blocks(f"layer{i + 1}.{{}}", _block("spatial" in stage[0]["conv1"])).read(
          reader, "", stage, f"layers/{i}")
      for i, stage in target["layers"].items()}
  return out


RESNET = Source(name="torchvision VideoResNet", keys="'stem.0.weight', 'layer1.0.conv1...'",
                detect=lambda keys: "stem.0.weight" in keys
                and any(k.startswith("layer1.") for k in keys),
                convert=_convert_resnet)

# torchvision's Conv3dNormActivation (conv, BN, ReLU), or a TemporalSeparableConv of two of them.
_UNIT = {"conv": "0", "norm": "1"}
UNIT = {**_UNIT, "spatial": tables.Within("0.", _UNIT), "temporal": tables.Within("1.", _UNIT)}
MIXED = {
    "branch0": tables.Within("branch0.", UNIT),
    "branch1": tables.Blocks("branch1.{}", UNIT),
    "branch2": tables.Blocks("branch2.{}", UNIT),
    "branch3": tables.Within("branch3.1.", UNIT),  # branch3.0 is the max pool
    "gates": tables.Blocks("gating_b{}", {"fc": "fc"}),
}
S3D_TABLE = {
    "conv1": tables.Within("features.0.", UNIT),
    "conv2b": tables.Within("features.2.", UNIT),
    "conv2c": tables.Within("features.3.", UNIT),
    "gate2c/fc": "gating.fc",
    "classifier": "classifier.1",  # classifier.0 is the dropout
}


def _convert_s3d(reader, target, model):
  out = tables.walk(reader, S3D_TABLE, target)
  # A max pool follows the last mixed block of stages 3 and 4, each one feature index.
  first, second = model.pool_after
  out["blocks"] = {
      i: tables.walk(reader, MIXED, block, f"blocks/{i}/",
                     f"features.{5 + i + (i > first) + (i > second)}.")
      for i, block in target["blocks"].items()}
  return out


S3D = Source(name="torchvision S3D", keys="'features.0.0.0.weight', 'classifier.1.weight'",
             detect=lambda keys: "classifier.1.weight" in keys
             and any(k.startswith("features.") for k in keys),
             convert=_convert_s3d)
