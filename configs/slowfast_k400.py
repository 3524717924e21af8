"""SlowFast (vidtx.models.slowfast) on Kinetics-400, from scratch, with PySlowFast's recipe
(configs/Kinetics/SLOWFAST_8x8_R50.yaml, SLOWFAST_4x16_R50.yaml, c2/SLOWFAST_8x8_R101_50_50.yaml),
which is Slow 8x8's on 32-frame clips: configs/slow_k400.py's `kinetics_recipe`.

  python -m vidtx.main --config=configs/slowfast_k400.py[:variant] --workdir=...

pytorchvideo's Kinetics weights start a run too: its hub's SLOWFAST_8x8_R50.pyth (r50_8x8),
SLOWFAST_16x8_R101_50_50.pyth (r101_8x8's network, trained on 64 frames:
--config.data.num_frames=64), SLOWFAST_8x8_R101.pyth (--config.model.size=r101_101_101_8x8),
and PySlowFast's own .pyth files of these networks:
  python -m vidtx.tools.convert_weights --config=configs/slowfast_k400.py:r50_8x8 \\
      --checkpoint=<SLOWFAST_8x8_R50.pyth> --out=<dir>
  then --config.init_from=<dir>.
Both were trained on Slow frames picked as vidtx.models.slowfast.slow_frames picks them.

Variants: r50_8x8 (default; alpha 4: 8 Slow frames; 34.6M parameters, 50.3 GMACs per 32x224
view, 65.7 at 256), r50_4x16 (alpha 8: 4 Slow frames; 34.5M, 27.6 / 36.1), r101_8x8
(PySlowFast's R101_50_50; 53.8M, 81.5 / 106.5); cpu: SlowFast 8x8 with one block per stage at
a quarter of the widths (Slow 16-128 inner channels, Fast 2-16), trained from scratch on the
built-in data (8 frames: 2 Slow ones) with slow_k400.py's cpu_recipe (AdamW at 2e-3) for 600
steps, each block's last BatchNorm scale starting at 1 (as Slow's cpu variant).
Clips: 32 frames 2 apart (the Fast pathway; Slow takes 32 / alpha of them), 224^2 crops after
short-side jitter 256-320, flips. Test: 10 clips x 3 crops of 256 (PySlowFast's TEST_CROP_SIZE)
from the short side 256.
Recipe (configs/slow_k400.py's): SGD momentum 0.9 (Nesterov), lr 0.1 per 64 clips, cosine over
196 epochs after 34 linear warm-up epochs from 0.01, weight decay 1e-4 (none on BatchNorm
parameters and biases), dropout 0.5 before the classifier, each block's last BatchNorm scale
starting at zero (RESNET.ZERO_INIT_FINAL_BN: model.slowfast.zero_init_final_norm), BatchNorm
statistics over each GPU's 8 clips and precise BN over 200 batches before each evaluation.
"""

from vidtx import configuration

# configs/slow_k400.py, whose Kinetics recipe this config shares.
SLOW = configuration.sibling(__file__, "slow_k400.py")

VARIANTS = ("r50_8x8", "r50_4x16", "r101_8x8", "cpu")


def get_config(arg=None):
  arg = arg or "r50_8x8"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
  c = configuration.base()
  c.model.name = "slowfast"
  c.model.slowfast.zero_init_final_norm = True
  configuration.load_module(SLOW).kinetics_recipe(c, arg == "cpu", frames=32, stride=2)
  if arg == "cpu":
    c.model.size = "r50_8x8"
    c.model.slowfast.stage_widths = (16, 32, 64, 128)
    c.model.slowfast.stage_blocks = (1, 1, 1, 1)
    c.model.slowfast.zero_init_final_norm = False  # see slow_k400.py's cpu variant
    c.total_steps = 600
    return c
  c.model.size = arg
  # 30 views of 32 frames per video; a view costs up to twice a Slow 8x8 one (R101: 106
  # GMACs at 256^2).
  c.eval_batch_size = 8
  return c
