"""MViTv2 on Kinetics-400 (../shared/systems/conv_and_mvit.md): MViT with decomposed relative
positions and residual pooling, queries pooled in every block, channels widened inside the
attention; after torchvision's `mvit_v2_s` and PySlowFast's projects/mvitv2
(configs/Kinetics/MVITv2_S_16x4.yaml, MVITv2_B_32x3.yaml).

  python -m vidtx.main --config=configs/mvitv2_k400.py[:s|:b|:cpu] --workdir=...

Variants: s (default; 16 blocks, 16 frames 4 apart: 34.5M parameters, 64.2 GMACs per 224^2
view); b (24 blocks in stages of 2, 3, 16, 3; 32 frames 3 apart, drop path 0.3: 51.2M, 225
GMACs in the paper); cpu: MViTv2-S's blocks at CPU scale on the built-in data.

The recipe is MViT's (configs/mvit_k400.py: AdamW, cosine with 30 warm-up epochs of 200, drop
path, mixup / cutmix, RandAugment, erasing, label smoothing). Test: 5 clips x 1 centre crop at
224.
"""

from vidtx import configuration

# configs/mvit_k400.py, whose recipe this config shares.
MVIT = configuration.sibling(__file__, "mvit_k400.py")

VARIANTS = ("s", "b", "cpu")


def get_config(arg=None):
  arg = arg or "s"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.size = "v2_b" if arg == "b" else "v2_s"
  frames, stride = (32, 3) if arg == "b" else (16, 4)
  configuration.load_module(MVIT).recipe(c, arg, frames=frames, stride=stride,
                                         drop_path=0.3 if arg == "b" else 0.2)
  return c
