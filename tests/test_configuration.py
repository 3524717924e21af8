import os

import pytest

from vidtx import configuration, errors, sharding


def config(**overrides):
  c = configuration.base()
  c.model.size, c.model.depth = "Ti", 2
  c.data.num_frames, c.data.crop_size, c.data.min_resize = 8, 32, 36
  c.model.patch_size = (2, 8, 8)
  c.batch_size = 16
  c.total_steps = 10
  c.optim.warmup_steps = 2
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_valid_config_passes():
  configuration.validate(config(), num_devices=8, num_processes=1)


@pytest.mark.parametrize("overrides, field, hint", [
    ({"data.num_frames": 7}, "data.num_frames", "tubelet"),
    ({"data.crop_size": 36}, "data.crop_size", "tubelet"),
    ({"batch_size": 12}, "batch_size", "--config.batch_size=8"),
    ({"model.name": "nope"}, "model.name", "choose one of"),
    ({"model.size": "XL"}, "model.size", "choose one of"),
    ({"model.num_heads": 5}, "model.width", "divisible by model.num_heads=5"),
    ({"model.dtype": "float13"}, "model.dtype", "bfloat16"),
    ({"data.min_resize": 30}, "data.min_resize", "at least config.data.crop_size"),
    ({"optim.warmup_steps": 11}, "optim.warmup_steps", "total_steps=10"),
    ({"total_steps": 0}, "total_steps", "at least 1"),
    ({"label_smoothing": 1.0}, "label_smoothing", "[0, 1)"),
    ({"mesh.shape": (3, 1, 1)}, "mesh.shape", "multiply to the 8 devices"),
    ({"mesh.shape": (-1, 3, 1)}, "mesh.shape", "do not divide"),
    ({"mesh.rules": (("embed", "model"),)}, "mesh.rules", "not in mesh.axes"),
    ({"model.masking": "blocks"}, "model.masking", "cell_running"),
    ({"model.mask_ratio": 1.0}, "model.mask_ratio", "[0, 1)"),
    ({"model.masking": "cell_running", "model.mask_ratio": 0.6}, "model.mask_ratio",
     "0.25, 0.5 or 0.75"),
    ({"model.masking": "cell_running", "model.mask_ratio": 0.5, "data.crop_size": 24},
     "model.mask_ratio", "even token grid"),
    ({"model.name": "mae"}, "model.masking", "needs masked tokens"),
    ({"model.name": "mae", "model.masking": "tube", "model.mask_ratio": 0.9,
      "model.mae.classifier": "linear"}, "model.mae.classifier", "bridge"),
    ({"model.name": "mae", "model.masking": "tube", "model.mask_ratio": 0.9,
      "model.head_init_scale": 0.001}, "model.head_init_scale", "does not read it"),
    ({"model.name": "mae", "model.masking": "tube", "model.mask_ratio": 0.9,
      "model.vit.pool": "cls"}, "model.vit.pool", "does not read the vit section"),
    ({"model.name": "mae", "model.masking": "tube", "model.mask_ratio": 0.9,
      "model.mae.decoder_heads": 5}, "model.mae.decoder_width", "decoder_heads=5"),
    ({"optim.layer_decay": 0.0}, "optim.layer_decay", "(0, 1]"),
])
def test_impossible_settings_name_the_field(overrides, field, hint):
  with pytest.raises(ValueError, match=rf"config\.{field}=") as err:
    configuration.validate(config(**overrides), num_devices=8, num_processes=1)
  assert hint in str(err.value)


def test_a_field_the_base_config_lacks_is_named_with_the_likeliest_one():
  """A config built in code is unlocked, so a misspelt (or pre-sections) field would be a new
  field that nothing reads: validate names it."""
  c = config()
  c.update_from_flattened_dict({"model.vtn.windw": 2})
  with pytest.raises(ValueError, match=r"config\.model\.vtn\.windw=2: is not a config field "
                     r"of this vidtx version: did you mean config\.model\.vtn\.window\?"):
    configuration.validate(c, num_devices=8, num_processes=1)


def test_batch_must_split_over_hosts():
  with pytest.raises(ValueError, match="number of hosts"):
    configuration.validate(config(batch_size=16), num_devices=1, num_processes=3)


def mesh(**fields):
  m = configuration.base().mesh
  m.update(fields)
  return m


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape(mesh(shape=(-1, 2, 1)), 8) == (4, 2, 1)
  assert sharding.mesh_shape(mesh(shape=(2, 2, 2)), 8) == (2, 2, 2)


@pytest.mark.parametrize("preset, shape", [
    ("data", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("fsdp_per_host", (2, 4, 1)), ("tensor", (2, 1, 4))])
def test_parallelism_presets_set_the_mesh_shape(preset, shape):
  # 2 hosts of 4 devices; the preset wins over mesh.shape.
  assert sharding.mesh_shape(mesh(parallelism=preset, shape=(1, 1, 8)), 8, 2) == shape


def test_unknown_parallelism_and_micro_batches_that_do_not_split_are_named():
  with pytest.raises(errors.ConfigError, match="mesh.parallelism='zero3'"):
    sharding.mesh_shape(mesh(parallelism="zero3"), 8)
  with pytest.raises(errors.ConfigError,
                     match="config.grad_accum_steps=4: each micro-batch of .* = 4 clips"):
    configuration.validate(config(batch_size=16, grad_accum_steps=4), num_devices=8,
                           num_processes=1)
  with pytest.raises(errors.ConfigError, match="config.grad_accum_steps=3: must divide"):
    configuration.validate(config(batch_size=16, grad_accum_steps=3), num_devices=1,
                           num_processes=1)


def test_configs_are_locked_against_unknown_fields():
  c = configuration.base()
  c.lock()
  with pytest.raises(AttributeError, match="learning_rate"):
    c.optim.learning_rate = 0.1


def test_a_config_loads_the_sibling_it_shares_a_recipe_with_from_any_directory(monkeypatch):
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  monkeypatch.chdir(os.path.dirname(configs))
  assert configuration.sibling("configs/x3d_k400.py", "slow_k400.py:cpu") == os.path.join(
      configs, "slow_k400.py:cpu")
  monkeypatch.chdir("/")  # ila_ssv2 loads ila_k400.py beside it
  assert configuration.load(os.path.join(configs, "ila_ssv2.py:cpu")).model.name == "ila"


def test_dataset_names_are_checked_and_kinetics600_has_600_classes():
  c = configuration.base()
  c.data.name = "kinetics700"
  with pytest.raises(errors.ConfigError,
                     match="data.name='kinetics700'.*kinetics600.*custom.*tfds:<name>"):
    configuration.validate(c, num_devices=1, num_processes=1)
  configuration.use_dataset(c, "kinetics600")
  assert (c.data.num_classes, c.data.frame_stride, c.data.eval_clips) == (600, 4, 5)


def test_a_label_map_of_another_size_than_num_classes_is_an_error(tmp_path):
  import json
  from vidtx import data
  from vidtx.data import records
  for split in ("train", "validation"):
    records.write_records(str(tmp_path / records.shard_name(split, 0, 1)), [])
  (tmp_path / records.LABELS).write_text(json.dumps(["a", "b", "c"]))
  c = configuration.base()
  c.data.update({"name": "custom", "data_dir": str(tmp_path), "num_classes": 5})
  with pytest.raises(errors.ConfigError, match="num_classes=5.*names 3 classes.*=3"):
    data.prepare(c.data, "")
  c.data.num_classes = 3
  assert data.prepare(c.data, "") == str(tmp_path)
