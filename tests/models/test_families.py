"""The contract every model family keeps (vidtx.models.FAMILIES), each at a tiny size: it
validates and builds; one real train step changes its parameters and its running statistics;
a checkpoint round trip restores both exactly; evaluating a clip does not depend on the other
clips of its batch; the flops tool counts it; 8 devices with its parameters sharded take the
steps of one; each of its weight converters fills it whole. A new family gets these by adding
its tiny config to TINY."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import builder, checkpoint, configuration, models, train, weights
from vidtx.models import layers, masking
from vidtx.tools import flops
from vidtx.weights import tables

import multidevice  # noqa: E402  (tests/multidevice.py)
from conftest import model_input, synthetic_batch  # noqa: E402  (tests/models/conftest.py)

# Every family's tiny config: 2 blocks (or stages) of width 32 on 4 frames of 32x32.
COMMON = {"data.num_frames": 4, "data.crop_size": 32, "data.num_classes": 8, "batch_size": 4,
          "total_steps": 10, "optim.warmup_steps": 0}
VIT = {"model.size": "Ti", "model.width": 32, "model.depth": 2, "model.num_heads": 4,
       "model.patch_size": (2, 8, 8)}
TINY = {
    "vit": VIT,
    "mae": {**VIT, "model.masking": "tube", "model.mask_ratio": 0.5,
            "model.mae.decoder_width": 32, "model.mae.decoder_depth": 1,
            "model.mae.decoder_heads": 4},
    "timesformer": {**VIT, "model.attention": "divided", "model.patch_size": (1, 8, 8)},
    "vivit": {**VIT, "model.attention": "factorised_encoder", "model.vivit.temporal_depth": 1},
    "ila": {**VIT, "model.attention": "space_only", "model.patch_size": (1, 8, 8),
            "model.ila.proj_dim": 16, "model.ila.channels": 32},
    "vtn": {**VIT, "model.attention": "space_only", "model.patch_size": (1, 8, 8),
            "model.vtn.temporal_depth": 1, "model.vtn.window": 1},
    "tps": {"model.size": "swin_t", "model.attention": "patch_shift", "model.width": 32,
            "model.num_heads": 4, "model.patch_size": (2, 4, 4), "model.tps.window_size": 4,
            "model.tps.stage_depths": (2,)},
    # BatchNorm over groups of 2 clips: on 8 devices, each group spans two of them.
    "cnn3d": {"model.size": "tiny", "model.bn.group_size": 2},
    # MViTv2 (relative positions, residual pooling): a second stage from block 1.
    "mvit": {"model.size": "v2_s", "model.width": 32, "model.depth": 2, "model.num_heads": 2,
             "model.patch_size": (2, 4, 4), "model.mvit.stages": (1,),
             "model.mvit.kv_stride": (1, 4, 4)},
    # (2+1)D convs, the second stage's striding (R3D's and MC3's 3-D convs: tests/parity,
    # tests/models/test_r2plus1d).
    "r2plus1d": {"model.size": "r2plus1d_18", "model.r2plus1d.stage_widths": (16, 32),
                 "model.r2plus1d.stage_blocks": (1, 1)},
    "s3d": {"model.size": "tiny", "model.s3d.gating": True, "data.num_frames": 8},
    # Two stages; each first block strides and has SE, the second block of stage 2 has none.
    "x3d": {"model.size": "xs", "model.x3d.stage_widths": (8, 16),
            "model.x3d.stage_blocks": (1, 2), "model.x3d.head_width": 32},
    # I3D's 5x7x7 stem, 3x1x1 conv_a and time pool; stage 2 strides, its first block a shortcut.
    "resnet3d": {"model.size": "i3d_r50", "model.resnet3d.stage_widths": (8, 16),
                 "model.resnet3d.stage_blocks": (1, 2)},
    # SlowFast 8x8 (alpha 4: 2 Slow frames of 8), fusions after the stem and stage 1; the Fast
    # widths (an eighth: 8, 16) split over 8 FSDP devices. Final BatchNorms start at zero (the
    # recipe's): from the default start, the second SGD step at lr 0.1 on the noise batch
    # raises the loss 2.4x, and one device and 8 then differ by 1.2e-3 in its momenta (the
    # Fast stem's kernel; session 15, with Conv3d's 2-D convolutions of the frames), where the
    # first step's agree to rounding.
    "slowfast": {"model.size": "r50_8x8", "data.num_frames": 8,
                 "model.slowfast.stage_widths": (64, 128), "model.slowfast.stage_blocks": (2, 1),
                 "model.slowfast.zero_init_final_norm": True},
}
# Where the 8-device test needs its own learning rate and tolerance: after a first SGD step at
# lr 0.1 on the noise batch, these tiny models amplify rounding 1e4-1e5-fold in the second.
# S3D (its loss rises): on one device, initial kernels scaled by 1 + 1e-7 move its second step's
# gradients by 1.7e-2 at a scale of 1.2, as 8 devices do; at lr 1e-3 its loss falls and 8
# devices match one to 3e-5 (its stem's gradients, of scale 4, differ by 2e-5 after the first
# step already). R(2+1)D: on one device, its convolutions as 2-D convolutions of the frames or
# as one product (layers.Conv3d's two CPU formulations, each the 3-D convolution to rounding)
# give second-step momenta 1.5e-3 apart at a scale of 0.09, as 8 devices do (whose 2-D
# convolutions see 1 clip where one device's see 8); the first step agrees to 1e-7, and at
# lr 1e-2 both steps do.
EIGHT_DEVICES = {"s3d": ({"optim.lr": 1e-3}, 1e-4),  # name: (config fields, atol)
                 "r2plus1d": ({"optim.lr": 1e-2}, 1e-5)}


def tiny_config(name):
  if name not in TINY:
    pytest.fail(f"family {name!r} has no tiny config: add one to TINY in "
                "tests/models/test_families.py")
  c = configuration.base()
  c.model.name = name
  c.update_from_flattened_dict({**COMMON, **TINY[name]})
  return c


def flat(tree) -> dict:
  """{"path/to/leaf": numpy array} of a state or pure dict."""
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(
              nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree)[0]}


@dataclasses.dataclass
class Run:
  """One family's tiny setup, its state before and after one real train step, and the batch."""
  name: str
  setup: builder.Setup
  before: nnx.State  # the model's state, copied
  state: nnx.State  # {"model", "optimizer"} after the step
  metrics: dict
  batch: dict


@pytest.fixture(scope="module", params=sorted(models.FAMILIES))
def run(request) -> Run:
  """Built once per family and shared by its checks: the compiles are most of the time."""
  config = tiny_config(request.param)
  setup = builder.build(config)
  batch = synthetic_batch(config, config.batch_size)
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    before = jax.tree.map(np.array, state["model"])  # the step donates its state
    rng = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    state, metrics = train.make_train_step(setup)(state, batch, rng,
                                                  train.stop_flags(setup.mesh, False))
  return Run(request.param, setup, before, state, jax.device_get(metrics), batch)


def test_every_tiny_config_is_a_family():
  assert set(TINY) <= set(models.FAMILIES), set(TINY) - set(models.FAMILIES)


def test_a_train_step_changes_the_parameters_and_running_statistics(run):
  assert np.isfinite(run.metrics["loss"])
  params = lambda state: flat(nnx.state(state, nnx.Param))
  before, after = params(run.before), params(run.state["model"])
  assert all(np.isfinite(x).all() for x in after.values())
  changed = [name for name in before if not np.array_equal(before[name], after[name])]
  # AdamW's first step moves every parameter with a gradient by about lr; the others (biases
  # behind a zero-initialised layer or before a BatchNorm) may stay.
  assert len(changed) > len(before) / 2, sorted(set(before) - set(changed))
  stats = lambda state: flat(nnx.state(state, nnx.BatchStat))
  before, after = stats(run.before), stats(run.state["model"])
  # Families with BatchNorm: the step carries every running average out, moved.
  assert [name for name in before if np.array_equal(before[name], after[name])] == []


def test_a_checkpoint_restores_parameters_and_statistics_exactly(run, tmp_path):
  saver = checkpoint.Checkpointer(str(tmp_path), keep=1)
  saver.save(1, run.state, {"step": 1})
  saver.wait()
  saver.close()
  reader = checkpoint.Checkpointer(str(tmp_path), keep=1)
  with jax.set_mesh(run.setup.mesh):
    restored, meta = reader.restore(run.setup.abstract_state)
  reader.close()
  assert meta == {"step": 1}
  saved, loaded = flat(run.state), flat(restored)
  assert saved.keys() == loaded.keys()
  for name in saved:
    np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)


def test_evaluating_a_clip_does_not_depend_on_the_other_clips(run):
  """Logits (a pre-training model's per-clip aux outputs, on the same mask) of clip 2 alone
  equal its row in the batch of 4 different clips, in evaluation mode: BatchNorm left on batch
  statistics would mix the clips."""
  config = run.setup.config
  classifies = models.classifies(config.model)
  # Evaluation masks a pre-training model from a fixed key (vidtx.evaluate); None otherwise.
  key = None if classifies else jax.random.key(config.seed)
  keep = masking.for_config(config.model, config.data, key, config.batch_size)

  @jax.jit
  def evaluate(state, video, keep):
    logits, aux = nnx.merge(run.setup.graphdef, state)["model"](video, train=False, keep=keep)
    return logits if classifies else {k: v for k, v in aux.items() if k != "loss"}

  video = model_input(run.setup.config, run.batch["video"])
  with jax.set_mesh(run.setup.mesh):
    batch = evaluate(run.state, video, keep)
    alone = evaluate(run.state, video[2:3], None if keep is None else keep[2:3])
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batch), strict=True):
    assert b.shape[0] == 4 and a.dtype == np.float32
    np.testing.assert_allclose(a, b[2:3], rtol=1e-4, atol=1e-5)
  if classifies:
    assert batch.shape == (4, config.data.num_classes)
    # Different clips, different logits: the batch did not collapse to one answer.
    assert np.abs(np.asarray(batch[0]) - np.asarray(batch[2])).max() > 1e-4


def test_the_flops_tool_counts_it(run):
  counted = flops.count(run.setup.config)
  assert counted["params"] == layers.count_params(nnx.state(run.state["model"], nnx.Param))
  assert counted["gmacs"] > 0


@pytest.mark.parametrize("name", sorted(models.FAMILIES))
def test_eight_devices_with_sharded_parameters_take_the_steps_of_one_device(name, tmp_path):
  """Every family on 8 simulated devices, its parameters sharded by FSDP, takes the same two
  train steps as on one device: losses, parameters, running statistics (over the global batch)
  and optimizer state. A process per family (JAX fixes its device count when it starts), so
  that none nears the subprocess's time limit on a slow machine and the workers share them.
  SGD, whose step and momentum are the gradient scaled, so that they compare the gradients;
  Adam would blow up the rounding noise of a gradient that is zero in exact arithmetic (a k
  bias, which the softmax cancels) to a step of about lr, differently on every mesh."""
  family_fields, atol = EIGHT_DEVICES.get(name, ({}, 1e-5))
  fields = {"model.name": name, **COMMON, **TINY.get(name, {}), "batch_size": 8,
            "optim.name": "sgd", "optim.lr": 0.1, "optim.weight_decay": 0.0, **family_fields}
  r = multidevice.train({"one": {**fields, "one_device": True},
                         "fsdp": {**fields, "mesh.parallelism": "fsdp"}}, tmp_path)
  one, fsdp = r["one"], r["fsdp"]
  assert isinstance(fsdp, dict), fsdp  # else the ConfigError's message
  assert (one["mesh"]["fsdp"], fsdp["mesh"]["fsdp"]) == (1, 8)
  multidevice.assert_same_training(fsdp, one, name, atol=atol)


# Where a family's converters read no tiny config of TINY's kind: HF has ViViT model 1 only.
CONVERTIBLE = {"vivit": {"model.attention": "joint"}}


class Recorder(tables.Reader):
  """A reader that answers every key a converter asks for with random numbers of the shape it
  asks, and keeps them: the state dict, in the source's layout, that fills the model. A key
  asked for twice in two shapes is recorded as a mismatch, as a real checkpoint's would be."""

  def __init__(self):
    super().__init__({})
    self.rng = np.random.default_rng(0)

  def take(self, key, shape, *targets):
    if key not in self.arrays:
      self.arrays[key] = self.rng.standard_normal(shape).astype(np.float32)
    return super().take(key, shape, *targets)


@pytest.mark.parametrize("name, index", [(name, i) for name, f in sorted(models.FAMILIES.items())
                                         for i in range(len(f.converters))])
def test_a_converter_round_trip_gives_back_every_parameter_and_statistic(name, index):
  """Each source a family converts from fills its tiny model whole: the state dict the source's
  tables ask for (random numbers, written by `Recorder`) is recognised as that source's, uses
  every key, fills every parameter and running statistic, and converts back to exactly what
  was written."""
  config = tiny_config(name)
  config.update_from_flattened_dict(CONVERTIBLE.get(name, {}))
  configuration.validate(config, num_devices=1, num_processes=1)
  source = models.FAMILIES[name].converters[index]
  model = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  module = getattr(model, source.part) if source.part else model
  target = nnx.to_pure_dict(nnx.state(module, (nnx.Param, nnx.BatchStat)))
  recorder = Recorder()
  written = source.convert(recorder, target, module)
  assert recorder.reasons == {} and recorder.mismatches == [], recorder.reasons
  assert source.detect(list(recorder.arrays)), sorted(recorder.arrays)[:5]
  converted = weights.convert(recorder.arrays, model, (source,))
  expected = flat({source.part: written} if source.part else written)
  got = flat(converted)
  assert got.keys() == expected.keys() and got
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
