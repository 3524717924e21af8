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
    "videomae_pretrain_k400.py": ["S", "B", "L", "H", "synthetic"],
    "videomae_k400.py": ["B", "synthetic"],
    "mar_k400.py": [None, "vit_l", "ratio75", "synthetic"],
    "mar_ssv2.py": [None, "vit_l", "ratio75"],
    "timesformer_k400.py": [None, "joint", "space_only", "hr", "large", "synthetic"],
    "vivit_k400.py": [None, "model2", "model3", "model4", "large", "synthetic"],
    "vtn_k400.py": [None, "whole_video", "synthetic"],
    "ila_k400.py": [None, "l14", "synthetic"],
    "ila_ssv2.py": [None],
    "tps_k400.py": [None, "swin_b", "synthetic"],
    "tps_ssv2.py": [None, "swin_b"],
    "cnn3d_synthetic.py": [None],
}


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


@pytest.mark.parametrize("name, variant", [("demo.py", None), ("videomae_pretrain_k400.py",
                                                               "synthetic"),
                                           ("videomae_k400.py", "synthetic"),
                                           ("mar_k400.py", "synthetic"),
                                           ("timesformer_k400.py", "synthetic"),
                                           ("vivit_k400.py", "synthetic")])
def test_flops_tool_counts_the_cpu_configs(name, variant):
  """(The ViT-B ones are counted in tests/tools/test_flops.py.)"""
  c = load(name, variant)
  result = flops.count(c)
  model = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  assert result["params"] == layers.count_params(nnx.state(model, nnx.Param))
  assert 0 < result["gmacs"] < 1
