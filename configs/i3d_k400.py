"""I3D R50 8x8 (vidtx.models.resnet3d) on Kinetics-400, from scratch, with PySlowFast's recipe
(configs/Kinetics/I3D_8x8_R50.yaml), which is Slow 8x8's: configs/slow_k400.py's `recipe`.

  python -m vidtx.main --config=configs/i3d_k400.py[:variant] --workdir=...

pytorchvideo's Kinetics weights (its hub's I3D_8x8_R50.pyth) start a run too:
  python -m vidtx.tools.convert_weights --config=configs/i3d_k400.py \\
      --checkpoint=<I3D_8x8_R50.pyth> --out=<dir>
  then --config.init_from=<dir>.
An ImageNet ResNet-50 (torchvision's or timm's `resnet50` state dict) converts into the
one-frame image model, which init_from inflates (I3D's own start, PySlowFast's
I3D_8x8_R50_IN1K.yaml; --config.init_from_inflation: "average", the paper's, or "central").

Variants: r50 (default; 28.0M parameters, 28.4 GMACs per 8x224 view), r101 (ResNet-101 depths,
PySlowFast's I3D_8x8_R101.yaml); cpu: I3D's 5x7x7 stem, temporal kernels and time pool with one
block per stage at a quarter of the widths, trained from scratch on the built-in data as Slow's
cpu variant (slow_k400.py's cpu_recipe: AdamW at 2e-3; final BatchNorm scales starting at 1).
Clips, test views and recipe: configs/slow_k400.py's (8 frames 8 apart, 224^2 crops after
short-side jitter 256-320; 10 clips x 3 crops at short side 256; SGD, lr 0.1 per 64 clips,
cosine over 196 epochs after 34 warm-up epochs, dropout 0.5, zero-initialised final BatchNorms,
BatchNorm over groups of 8 clips, precise BN).
"""

from vidtx import configuration

# configs/slow_k400.py, whose recipe this config shares.
SLOW = configuration.sibling(__file__, "slow_k400.py")

VARIANTS = ("r50", "r101", "cpu")


def get_config(arg=None):
  arg = arg or "r50"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  configuration.load_module(SLOW).recipe(c, "i3d", arg)
  return c
