"""Tests of evaluation: multi-view aggregation on known logits, and the eval step on views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, configuration, errors, evaluate, sharding
from vidtx.data import on_device


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_averaged_views_can_beat_the_centre_view():
  # Video 0 (label 2): the centre view (1) prefers class 0, the average prefers class 2.
  # Video 1 (label 1): every view prefers class 1.
  logits = np.array([[[0, 0, 5, 0], [3, 0, 2, 0], [0, 0, 5, 0]],
                     [[0, 4, 0, 0], [0, 4, 0, 0], [1, 4, 0, 0]]], np.float32)
  labels = np.array([2, 1])
  single = evaluate.classification_metrics(jnp.asarray(logits[:, 1]), jnp.asarray(labels))
  views = evaluate.averaged_view_metrics(jnp.asarray(logits), jnp.asarray(labels), "3x1")
  assert single["top1"].tolist() == [0, 1] and views["top1_3x1"].tolist() == [1, 1]
  assert single["top5"].tolist() == [1, 1] and views["top5_3x1"].tolist() == [1, 1]
  np.testing.assert_allclose(single["loss"], -np.log(softmax(logits[:, 1])[[0, 1], labels]),
                             rtol=1e-5)
  mean_probs = softmax(logits).mean(1)
  np.testing.assert_allclose(views["loss_3x1"], -np.log(mean_probs[[0, 1], labels]), rtol=1e-5)
  # Top-2 of the average: video 0's label ranks first; ranks count ties in the label's favour.
  assert evaluate.topk_correct(jnp.array([[1.0, 1.0, 0.0]]), jnp.array([1]), 1).tolist() == [1]


TINY = {"model.width": 32, "model.depth": 2, "model.num_heads": 4, "model.patch_size": (2, 8, 8),
        "data.num_frames": 4, "data.eval_clips": 2, "data.eval_crops": 3, "batch_size": 4}


def setup_for(**overrides):
  c = configuration.base()
  tiny = TINY if overrides.get("model.name", "vit") == "vit" else {
      k: v for k, v in TINY.items() if not k.startswith("model.")}
  c.update_from_flattened_dict({**tiny, **overrides})
  c.lock()
  return builder.build(c)


def multi_view_batch():
  rng = np.random.default_rng(0)
  return {"video": rng.integers(0, 256, (4, 6, 4, 32, 32, 3), np.uint8),  # as the host sends
          "label": np.array([1, 5, 7, 0], np.int32),
          "mask": np.array([1, 1, 1, 0], np.float32),  # the last slot is padding ...
          "skipped": np.array([0, 0, 0, 1], np.float32)}  # ... for a record that did not decode


def test_eval_step_averages_the_views_of_each_video():
  setup = setup_for()
  state = builder.init_state(setup)
  batch = multi_view_batch()
  eval_step = evaluate.make_eval_step(setup)
  with jax.set_mesh(setup.mesh):
    sums = eval_step(state, sharding.to_global(batch, setup.batch_sharding))
    one_view = jax.jit(lambda state, video: nnx.merge(setup.graphdef, state)["model"](
        video, train=False)[0])
    video = on_device.eval_clips(setup.config.data, batch["video"])  # normalised
    logits = jnp.stack([one_view(state, video[:, v]) for v in range(6)],
                       axis=1)  # [b, V, classes], view by view
  labels, mask = jnp.asarray(batch["label"]), batch["mask"]
  want = {**evaluate.classification_metrics(logits[:, 1], labels),  # centre: clip 0, crop 1
          **evaluate.averaged_view_metrics(logits, labels, "2x3")}
  assert set(sums) == {*want, "count", "num_skipped"}
  for name, per_example in want.items():
    np.testing.assert_allclose(sums[name], np.sum(np.asarray(per_example) * mask), rtol=1e-4,
                               atol=1e-5, err_msg=name)
  assert float(sums["count"]) == 3 and float(sums["num_skipped"]) == 1

  metrics = evaluate.evaluate(eval_step, state, [batch, batch], setup.batch_sharding)
  assert metrics["num_examples"] == 6 and metrics["num_skipped"] == 2
  assert metrics["top1_2x3"] == pytest.approx(float(sums["top1_2x3"]) / 3)


def test_pretraining_model_is_evaluated_on_the_centre_view():
  pretraining = {"model.name": "mae", "model.mae.classifier": "none", "model.masking": "tube",
                 "model.mask_ratio": 0.5, "model.mae.decoder_width": 16,
                 "model.mae.decoder_depth": 1, "model.mae.decoder_heads": 2}
  setup = setup_for(**pretraining)
  state = builder.init_state(setup)
  one_view = setup_for(**pretraining, **{"data.eval_clips": 1, "data.eval_crops": 1})
  batch = multi_view_batch()
  with jax.set_mesh(setup.mesh):
    sums = evaluate.make_eval_step(setup)(state, sharding.to_global(batch, setup.batch_sharding))
    centre = dict(batch, video=batch["video"][:, 1])
    want = evaluate.make_eval_step(one_view)(state, sharding.to_global(centre,
                                                                       setup.batch_sharding))
  assert set(sums) == {"recon_mse", "count", "num_skipped"}
  np.testing.assert_allclose(sums["recon_mse"], want["recon_mse"], rtol=1e-6)
  assert float(sums["recon_mse"]) > 0


def test_a_fully_convolutional_model_evaluates_crops_larger_than_its_training_ones():
  setup = setup_for(**{"model.name": "cnn3d", "model.size": "tiny", "data.min_resize": 40,
                       "data.eval_crop_size": 40})
  state = builder.init_state(setup)
  batch = {**multi_view_batch(), "video": np.random.default_rng(1).integers(
      0, 256, (4, 6, 4, 40, 40, 3), np.uint8)}
  with jax.set_mesh(setup.mesh):
    sums = evaluate.make_eval_step(setup)(state, sharding.to_global(batch, setup.batch_sharding))
    model = nnx.merge(setup.graphdef, state)["model"]
    video = on_device.eval_clips(setup.config.data, batch["video"])
    logits = jnp.stack([model(video[:, v])[0] for v in range(6)], axis=1)
  want = evaluate.averaged_view_metrics(logits, jnp.asarray(batch["label"]), "2x3")
  np.testing.assert_allclose(sums["loss_2x3"], np.sum(want["loss_2x3"] * batch["mask"]),
                             rtol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    ({"data.eval_crop_size": 48, "data.min_resize": 48},
     "config.data.eval_crop_size=48: model.name='vit' evaluates clips of its training crop only"),
    ({"model.name": "cnn3d", "model.size": "tiny", "data.eval_crop_size": 40},
     "config.data.eval_crop_size=40: must be 0 .crop_size. or a side at most the eval short "
     "side 36"),
])
def test_eval_crops_the_model_or_the_frames_cannot_take_are_refused(overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    setup_for(**overrides)
