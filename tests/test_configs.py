"""Every experiment config and variant loads, passes validation and builds its model."""

import glob
import os

import pytest
from flax import nnx

from vidtx import configuration, models
from vidtx.models import layers
from vidtx.tools import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "demo.py": [None],
    "videomae_pretrain_k400.py": ["S", "B", "L", "H", "cpu"],
    "videomae_k400.py": ["B", "cpu"],
    "mar_k400.py": [None, "vit_l", "ratio75", "cpu"],
    "mar_ssv2.py": [None, "vit_l", "ratio75", "cpu"],
    "timesformer_k400.py": [None, "joint", "space_only", "hr", "large", "cpu"],
    "vivit_k400.py": [None, "model2", "model3", "model4", "large", "cpu"],
    "vtn_k400.py": [None, "whole_video", "cpu"],
    "ila_k400.py": [None, "l14", "cpu"],
    "ila_ssv2.py": [None, "cpu"],
    "tps_k400.py": [None, "swin_b", "cpu"],
    "tps_ssv2.py": [None, "swin_b", "cpu"],
    "mvit_k400.py": [None, "b_32x3", "cpu"],
    "mvitv2_k400.py": [None, "b", "cpu"],
    "mvitv2_ssv2.py": [None, "cpu"],
    "cnn3d_synthetic.py": [None],
    "r2plus1d_k400.py": [None, "r2plus1d_34", "r3d_18", "mc3_18", "cpu"],
    "s3d_k400.py": [None, "s3d_g", "cpu"],
    "x3d_k400.py": ["xs", "s", None, "l", "cpu"],
    "slow_k400.py": [None, "r101", "cpu"],
    "i3d_k400.py": [None, "r101", "cpu"],
    "slowfast_k400.py": [None, "r50_4x16", "r101_8x8", "cpu"],
    "slowfast_ssv2.py": [None, "cpu"],
    "custom.py": [None],
}
# The configs of a dataset on disk (Kinetics-400, SSv2): each has a `:cpu` variant.
DATASET_CONFIGS = [n for n in VARIANTS if n.endswith(("_k400.py", "_ssv2.py"))]


def load(name, variant=None):
  return configuration.load(os.path.join(ROOT, "configs", name) + (f":{variant}" if variant else ""))


def test_every_config_file_is_listed():
  assert sorted(os.path.basename(p) for p in glob.glob(f"{ROOT}/configs/*.py")) == sorted(VARIANTS)


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_config_validates_and_builds(name, variant):
  c = load(name, variant)
  configuration.validate(c, num_devices=1, num_processes=1)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert layers.count_params(nnx.state(model, nnx.Param)) > 0


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_cpu_variant_is_the_recipe_at_cpu_size_on_the_built_in_data(name):
  """`:cpu` trains the config's family on a CPU, with nothing to download and no flag to add: the
  synthetic data's 8 classes in 8 frames of 32x32, a model under 2M parameters, a short
  schedule, one evaluation view per video."""
  full, cpu = load(name), load(name, "cpu")
  assert (cpu.model.name, cpu.model.attention, cpu.model.masking) == (
      full.model.name, full.model.attention, full.model.masking)
  d = cpu.data
  assert (d.name, d.num_classes, d.num_frames, d.crop_size) == ("synthetic_motion", 8, 8, 32)
  if name.endswith("_ssv2.py"):  # SSv2's segment sampling and label-swapping flips
    assert (d.sampler, d.flip) == (full.data.sampler, full.data.flip) == ("segment",
                                                                          "swap_labels")
  assert (d.eval_clips, d.eval_crops, cpu.eval_batch_size, cpu.grad_accum_steps) == (1, 1, 0, 1)
  assert cpu.total_steps <= 4000 and cpu.optim.warmup_steps <= cpu.total_steps // 10
  assert cpu.init_from == "" and cpu.optim.frozen == ()  # trains from scratch, all of it
  model = nnx.eval_shape(lambda: models.build(cpu.model, cpu.data, nnx.Rngs(0)))
  assert layers.count_params(nnx.state(model, nnx.Param)) < 2_000_000


def test_custom_config_reads_the_users_videos_and_keeps_every_label():
  """configs/custom.py is for any user's classes: it reads the shards named on the command line
  and flips nothing, since a flip may turn one of the user's classes into another (pan left ->
  pan right) and we cannot know which."""
  c = load("custom.py")
  assert (c.data.name, c.data.data_dir, c.data.flip) == ("custom", "", "none")


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="unknown variant 'vit_s'"):
    load("mar_k400.py", "vit_s")


def test_mar_recipes_follow_the_paper():
  b, l, b75, ssv2 = (load("mar_k400.py"), load("mar_k400.py", "vit_l"),
                     load("mar_k400.py", "ratio75"), load("mar_ssv2.py"))
  assert (b.model.masking, b.model.mask_ratio, b75.model.mask_ratio) == ("cell_running", 0.5, 0.75)
  assert (b.model.mae.recon_weight, ssv2.model.mae.recon_weight) == (0.01, 0.1)
  assert (b.optim.layer_decay, l.optim.layer_decay, ssv2.optim.layer_decay) == (0.65, 0.75, 0.75)
  assert (b.model.head_dropout, l.model.head_dropout, ssv2.model.head_dropout) == (0.0, 0.1, 0.1)
  bridge = b.model.mae
  assert (bridge.bridge_width, bridge.bridge_depth, bridge.bridge_heads) == (512, 2, 4)
  assert b.data.num_classes == 400 and ssv2.data.num_classes == 174
  assert (b.data.num_frames, b.data.frame_stride, b.data.crop_size) == (16, 4, 224)


def test_pretraining_recipe_scales_lr_with_batch():
  c = load("videomae_pretrain_k400.py", "B")
  assert (c.model.masking, c.model.mask_ratio) == ("tube", 0.9)
  assert c.optim.lr == pytest.approx(1.5e-4 * 2048 / 256) and c.optim.b2 == 0.95


@pytest.mark.parametrize("name, variant", [("demo.py", None), ("videomae_pretrain_k400.py", "cpu"),
                                           ("videomae_k400.py", "cpu"), ("mar_k400.py", "cpu"),
                                           ("timesformer_k400.py", "cpu"),
                                           ("vivit_k400.py", "cpu"), ("r2plus1d_k400.py", "cpu"),
                                           ("s3d_k400.py", "cpu"), ("x3d_k400.py", "cpu"),
                                           ("slow_k400.py", "cpu"), ("i3d_k400.py", "cpu"),
                                           ("slowfast_k400.py", "cpu")])
def test_flops_tool_counts_the_cpu_configs(name, variant):
  """(The ViT-B ones are counted in tests/tools/test_flops.py.)"""
  c = load(name, variant)
  result = flops.count(c)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert result["params"] == layers.count_params(nnx.state(model, nnx.Param))
  assert 0 < result["gmacs"] < 1
