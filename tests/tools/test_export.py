"""Export: StableHLO and SavedModel reload and give the Flax model's logits."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf

from test_train import untrained_run
from vidtx import builder, configuration
from vidtx.tools import export

# A tiny MAR classifier: the export must carry its fixed test-time mask too.
TINY_MAR = {
    "model.name": "mae", "model.mae.classifier": "bridge", "model.masking": "cell_running",
    "model.mask_ratio": 0.5, "model.width": 32, "model.depth": 2, "model.num_heads": 4,
    "model.patch_size": (2, 8, 8), "model.mae.decoder_width": 32, "model.mae.decoder_depth": 1,
    "model.mae.decoder_heads": 4, "model.mae.bridge_width": 32, "model.mae.bridge_depth": 1,
    "model.mae.bridge_heads": 4, "data.num_frames": 4, "batch_size": 4, "optim.warmup_steps": 1,
    "total_steps": 2,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir as training leaves it: config.json and a checkpoint (random weights)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = configuration.base()
  config.update_from_flattened_dict(TINY_MAR)
  untrained_run(config, workdir, step=7)
  return workdir, config


def test_the_run_config_comes_back_from_config_json(run):
  workdir, config = run
  assert configuration.from_workdir(workdir).to_json() == config.to_json()


def test_exports_reload_and_give_the_models_logits(run, tmp_path):
  workdir, _ = run
  config = configuration.from_workdir(workdir)
  info = export.export(config, workdir, str(tmp_path))
  assert info["step"] == 7 and info["input"]["frames_uint8_rgb"] == [None, 4, 32, 32, 3]
  assert json.load(open(tmp_path / "export.json")) == info

  model, _ = builder.restore_model(config, workdir)
  params, fn = export.logits_fn(model, config)
  frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
  expected = np.asarray(fn(params, frames))
  assert expected.shape == (3, 8) and np.abs(expected).max() > 0

  stablehlo = jax.export.deserialize(open(tmp_path / "model.stablehlo", "rb").read())
  saved = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
  for batch in (3, 1):  # any batch size
    np.testing.assert_allclose(stablehlo.call(frames[:batch]), expected[:batch], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(saved(frames=tf.constant(frames[:batch]))["logits"].numpy(),
                               expected[:batch], rtol=1e-5, atol=1e-6)


def test_a_pretraining_model_has_no_logits_to_export(run):
  _, config = run
  config = configuration.base()
  config.update_from_flattened_dict({**TINY_MAR, "model.mae.classifier": "none"})
  with pytest.raises(ValueError, match="pre-training model: it has no logits"):
    export.logits_fn(None, config)
