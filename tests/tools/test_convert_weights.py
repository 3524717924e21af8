import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vidtx import builder, checkpoint, configuration, models  # noqa: E402
from vidtx.tools import convert_weights  # noqa: E402
from torch_params import randomise  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny VideoMAE ViT (4 frames of 32x32, 2x8x8 tubelets); the CLI test overrides num_classes.
TINY_CONFIG = """
from vidtx import configuration


def get_config(arg=None):
  c = configuration.base()
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", 64, 2, 4
  c.model.patch_size = (2, 8, 8)
  c.data.num_frames, c.data.crop_size, c.data.min_resize = 4, 32, 32
  c.data.num_classes = 8
  c.total_steps, c.optim.warmup_steps = 10, 1
  return c
"""


def tiny_config(tmp_path):
  path = tmp_path / "tiny.py"
  path.write_text(TINY_CONFIG)
  namespace = {}
  exec(compile(TINY_CONFIG, str(path), "exec"), namespace)
  config = namespace["get_config"]()
  config.data.num_classes = 5
  return str(path), config


def hf_classifier(**kw):
  """A random HF VideoMAE classifier matching the tiny config, every parameter perturbed."""
  config = transformers.VideoMAEConfig(
      image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
      num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_labels=5,
      use_mean_pooling=True, layer_norm_eps=1e-6, **kw)
  model = transformers.VideoMAEForVideoClassification(config)
  return randomise(model)


def test_cli_output_initialises_a_training_run_to_the_hf_logits(tmp_path):
  hf = hf_classifier()
  hf.save_pretrained(tmp_path / "hf")  # model.safetensors + config.json
  config_path, config = tiny_config(tmp_path)
  out = tmp_path / "converted"
  result = subprocess.run(
      [sys.executable, "-m", "vidtx.tools.convert_weights", f"--config={config_path}",
       "--config.data.num_classes=5", f"--checkpoint={tmp_path / 'hf'}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"--config.init_from={out}" in result.stdout

  config.init_from = str(out)
  setup = builder.build(config)
  with jax.set_mesh(setup.mesh):
    state = checkpoint.init_from(builder.init_state(setup), config.init_from,
                                 models.family(config.model))
    model = nnx.merge(setup.graphdef, state)["model"]
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((2, 4, 3, 32, 32)).astype(np.float32)  # HF: [B, T, C, H, W]
    logits = nnx.jit(lambda model, video: model(video)[0])(model, clip.transpose(0, 1, 3, 4, 2))
  hf.fc_norm.eps = 1e-6  # HF's fc_norm uses torch's default 1e-5; VideoMAE and ours 1e-6
  with torch.no_grad():
    expected = hf(pixel_values=torch.from_numpy(clip)).logits.numpy()
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_refuses_to_overwrite(tmp_path):
  _, config = tiny_config(tmp_path)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "something").write_text("")
  with pytest.raises(ValueError, match="is not empty"):
    convert_weights.convert(config, str(tmp_path / "missing.pth"), str(tmp_path / "out"))


def test_checkpoint_that_does_not_fit_the_config_writes_nothing(tmp_path):
  hf = hf_classifier()
  path = tmp_path / "classifier.pth"
  torch.save(hf.state_dict(), path)
  _, config = tiny_config(tmp_path)
  config.model.depth = 3
  with pytest.raises(ValueError, match=r"encoder/blocks/2/norm1/scale \(64,\): the checkpoint "
                                       r"has no videomae\.encoder\.layer\.2\.layernorm_before"):
    convert_weights.convert(config, str(path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_an_hf_directory_whose_settings_do_not_fit_is_refused_by_name(tmp_path):
  """Names and shapes fit, but config.json says the blocks compute another GELU."""
  hf_classifier(hidden_act="gelu_new").save_pretrained(tmp_path / "hf")
  _, config = tiny_config(tmp_path)
  with pytest.raises(ValueError, match=r"hidden_act='gelu_new' \(the tanh approximation of "
                                       r"GELU\): our VideoViT blocks use exact GELU"):
    convert_weights.convert(config, str(tmp_path / "hf"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_pretraining_checkpoint_converts_with_the_mae_config(tmp_path):
  """The documented route to fine-tuning: convert with the pre-training config, then init_from
  copies the encoder into the classifier."""
  config = configuration.base()
  config.model.name, config.model.size = "mae", "Ti"
  config.model.width, config.model.depth, config.model.num_heads = 64, 2, 4
  config.model.mae.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
  config.model.patch_size = (2, 8, 8)
  config.model.masking, config.model.mask_ratio = "tube", 0.75
  config.data.num_frames, config.data.crop_size, config.data.min_resize = 4, 32, 32
  hf = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(
      image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
      num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, decoder_hidden_size=32,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=128,
      use_mean_pooling=False))
  hf.save_pretrained(tmp_path / "hf", safe_serialization=False)  # pytorch_model.bin
  params = convert_weights.convert(config, str(tmp_path / "hf"), str(tmp_path / "out"))
  np.testing.assert_array_equal(params["mask_token"], hf.mask_token.detach().numpy())

  _, finetune = tiny_config(tmp_path)
  setup = builder.build(finetune)
  with jax.set_mesh(setup.mesh):
    state = checkpoint.init_from(builder.init_state(setup), str(tmp_path / "out"),
                                 models.family(finetune.model))
  model = nnx.merge(setup.graphdef, state)["model"]
  np.testing.assert_array_equal(
      model.encoder.blocks[1].mlp.fc2.kernel[...],
      hf.videomae.encoder.layer[1].output.dense.weight.detach().numpy().T)


def test_a_checkpoint_of_another_family_names_that_family(tmp_path):
  from safetensors import numpy as safetensors_numpy
  path = str(tmp_path / "timesformer.safetensors")  # enough of HF TimeSformer to be told apart
  safetensors_numpy.save_file(
      {"timesformer.embeddings.cls_token": np.zeros((1, 1, 64), np.float32)}, path)
  _, config = tiny_config(tmp_path)
  with pytest.raises(ValueError, match=r"(?s)model.name='vit' does not convert this checkpoint.*"
                                       r"HF VideoMAE.*image model from HF image ViT.*Its keys "
                                       r"fit model.name in \['timesformer'\]"):
    convert_weights.convert(config, path, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
