import contextlib
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from vidtx import builder, checkpoint, configuration, data
from vidtx.models import mae
from vidtx.tools import visualize_masks as vm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# configs/demo.py (8 frames of 32x32) with a tiny VideoMAE and a tiny synthetic dataset.
TINY = {
    "model.name": "mae", "model.masking": "tube", "model.mask_ratio": 0.75,
    "model.patch_size": (2, 8, 8), "model.size": "Ti", "model.width": 32, "model.depth": 2,
    "model.num_heads": 2, "model.mae.decoder_width": 16, "model.mae.decoder_depth": 1,
    "model.mae.decoder_heads": 2, "data.synthetic.num_train": 16, "data.synthetic.num_val": 24,
    "data.synthetic.num_shards": 2,
}
T, S, SCALE = 8, 32, 4  # frames, frame size, auto upscale of 32-pixel frames
GRID, PATCH = (4, 4, 4), (2, 8, 8)
SAVED_STEP = 7


def tiny_config(**overrides):
  c = configuration.load(os.path.join(ROOT, "configs", "demo.py"))
  c.update_from_flattened_dict({**TINY, **overrides})
  return c


def flag_args(**overrides):
  fmt = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
  return [f"--config.{k}={fmt(v)}" for k, v in {**TINY, **overrides}.items()]


def pattern(k, leaf):
  """The value of state leaf k in the run's checkpoint: recognisably not a random init."""
  return np.full(leaf.shape, (k + 1) / 1000, leaf.dtype)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run's workdir: its synthetic data and a checkpoint (step 7) whose arrays follow
  `pattern` (written directly: compiling an initialisation would cost seconds)."""
  path = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  data.prepare(config.data, path)
  leaves, treedef = jax.tree.flatten(builder.build(config).abstract_state)
  state = jax.tree.unflatten(treedef, [pattern(k, x) for k, x in enumerate(leaves)])
  ckpt = checkpoint.Checkpointer(path, keep=1)
  ckpt.save(SAVED_STEP, state, {"step": SAVED_STEP, "data_position": 0, "rng": [0, 0]})
  ckpt.wait()
  ckpt.close()
  return path


@pytest.fixture(scope="module")
def clip(run_dir):
  video, label = vm.load_clip(tiny_config(), 5, run_dir)
  assert video.shape == (T, S, S, 3) and 0 <= label < 8
  return video


@pytest.fixture(scope="module")
def trained(run_dir):
  return vm.load_model(tiny_config(), run_dir)


@pytest.fixture(scope="module")
def no_run(tmp_path_factory):
  """(out prefix, stdout) of the tool run without a workdir on clip 5, mask seed 4."""
  prefix = str(tmp_path_factory.mktemp("no_run") / "masks")
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    paths = vm.run(tiny_config(), prefix, index=5, seed=4)
  assert paths == (f"{prefix}.png", f"{prefix}.gif")
  return prefix, stdout.getvalue()


def tiles(image, num_rows):
  """uint8 [num_rows, T, S, S, 3]: the grid's tiles, checked to be nearest-neighbour upscales."""
  out = np.zeros((num_rows, T, S, S, 3), np.uint8)
  for r in range(num_rows):
    for t in range(T):
      y, x = vm.tile_origin(r, t, (S * SCALE, S * SCALE))
      tile = image[y:y + S * SCALE, x:x + S * SCALE]
      out[r, t] = tile[::SCALE, ::SCALE]
      np.testing.assert_array_equal(tile, out[r, t].repeat(SCALE, 0).repeat(SCALE, 1))
  return out


def visible_tubelets(keep):
  visible = np.zeros(64, bool)
  visible[keep] = True
  return visible


def test_grid_shows_input_mask_and_reconstruction(clip, trained):
  config = tiny_config()
  keep = vm.keep_for(config, seed=0)
  assert keep.shape == (16,)  # tube 75%: 4 of 16 positions visible in each of 4 time slices
  image = vm.render(config, clip, keep, trained[0], step=trained[1])
  # 3 rows x 8 frames of 128-pixel tiles, 2-pixel separators, the label column on the left.
  assert image.shape == (2 + 3 * (128 + 2), vm.LABEL_WIDTH + 2 + 8 * (128 + 2), 3)
  assert image.dtype == np.uint8
  rows = tiles(image, 3)

  pixels = np.clip(clip * np.asarray(config.data.std) + np.asarray(config.data.mean), 0, 1)
  expected = np.round(pixels * 255).astype(np.uint8)
  np.testing.assert_array_equal(rows[0], expected)

  visible = visible_tubelets(keep)
  _, masked_tubes, recon_tubes = (vm.patchify(r, PATCH) for r in rows)
  exp_tubes = vm.patchify(expected, PATCH)
  assert np.all(masked_tubes[~visible] == vm.GREY)  # every pixel of the 48 masked tubelets
  np.testing.assert_array_equal(masked_tubes[visible], exp_tubes[visible])
  np.testing.assert_array_equal(recon_tubes[visible], exp_tubes[visible])
  # The masked tubelets of the last row come from the decoder, not the input.
  assert np.mean(recon_tubes[~visible] != exp_tubes[~visible]) > 0.5
  # The mask is the same in every time slice (tube masking).
  per_slice = visible.reshape(4, 16)
  assert np.all(per_slice == per_slice[0]) and per_slice[0].sum() == 4


def test_denormalize_inverts_the_reconstruction_target(clip):
  """A prediction equal to the clip's own normalised target maps back to its pixels."""
  config = tiny_config()
  targets = np.asarray(mae.pixel_targets(jnp.asarray(clip)[None], PATCH, config.data.mean,
                                         config.data.std))[0]  # [64, 384]
  pixels = vm.to_pixels(clip, config.data.mean, config.data.std)
  indices = np.array([0, 5, 17, 42, 63])
  restored = vm.denormalize(targets[indices], pixels, PATCH, indices)
  assert restored.shape == (5, 2 * 8 * 8, 3)
  np.testing.assert_allclose(restored, vm.patchify(pixels, PATCH)[indices], atol=1e-3)
  # Tubelet 17 is (t=1, h=0, w=1): frames 2-3, rows 0-7, columns 8-15; pixel (t, h, w) order.
  np.testing.assert_allclose(restored[2].reshape(2, 8, 8, 3), pixels[2:4, 0:8, 8:16], atol=1e-3)


class ZeroEncoder(nnx.Module):
  """A stand-in encoder of the clip's 64 tokens: zeros for the visible ones."""
  num_patches = 64

  def __call__(self, video, keep):
    return jnp.zeros(keep.shape + (4,))


class PerfectDecoder(nnx.Module):
  """A stand-in masked model whose decoder predicts the clip's own normalised targets."""

  def __init__(self, video, config):
    self.encoder = ZeroEncoder()
    self.targets = nnx.Variable(mae.pixel_targets(jnp.asarray(video)[None], PATCH,
                                                  config.data.mean, config.data.std))

  def norm(self, tokens):
    return tokens

  def reconstruct(self, tokens, keep):
    masked = mae.masked_indices(keep, 64)
    return jnp.take_along_axis(self.targets[...], masked[..., None], axis=1)


def test_perfect_predictions_reproduce_the_clip(clip):
  """End to end: masked-token order, (t, h, w, c) layout and de-normalisation all line up."""
  config = tiny_config(**{"model.masking": "random"})
  keep = vm.keep_for(config, seed=1)
  rows, labels = vm.frame_rows(config, clip, keep, PerfectDecoder(clip, config))
  assert labels[0] == "input" and labels[2].startswith("reconstruction\n(untrained")
  assert "48/64" in labels[1] and "75%" in labels[1]
  per_slice = visible_tubelets(keep).reshape(4, 16)
  assert not np.all(per_slice == per_slice[0])  # unlike tube masking, the slices differ
  diff = np.abs(rows[2].astype(int) - rows[0].astype(int))
  assert diff.max() <= 1  # uint8 rounding of float32 round trips


def test_classifier_config_shows_input_and_mask_only(clip):
  config = tiny_config(**{"model.name": "vit", "model.masking": "cell_running",
                          "model.mask_ratio": 0.5})
  keep = vm.keep_for(config, seed=123)  # the fixed test-time form: the seed does not matter
  np.testing.assert_array_equal(keep, vm.keep_for(config, seed=0))
  assert keep.shape == (32,)
  image = vm.render(config, clip, keep)
  assert image.shape == (2 + 2 * 130, vm.LABEL_WIDTH + 2 + 8 * 130, 3)
  rows = tiles(image, 2)
  masked = vm.patchify(rows[1], PATCH)[~visible_tubelets(keep)]
  assert masked.shape[0] == 32 and np.all(masked == vm.GREY)
  frames = vm.animation(*vm.frame_rows(config, clip, keep), scale=2)
  assert len(frames) == T and frames[0].shape == (2 + 2 * 66, vm.LABEL_WIDTH + 2 + 66, 3)


def test_load_model_restores_the_runs_latest_checkpoint(trained):
  model, step = trained
  assert step == SAVED_STEP
  leaves = jax.tree.leaves(nnx.state(model))
  assert len(leaves) > 20
  for k, leaf in enumerate(leaves):  # the model's arrays come first in the saved state
    np.testing.assert_array_equal(leaf, pattern(k, leaf))


def test_bad_flags_name_the_value_and_the_fix(run_dir, tmp_path):
  config = tiny_config()
  with pytest.raises(vm.VisualizeError,
                     match=r"--index=24 is beyond the 24 clips.*--index=0\.\.23"):
    vm.load_clip(config, 24, run_dir)
  with pytest.raises(vm.VisualizeError, match="--index=-1 is negative"):
    vm.load_clip(config, -1, run_dir)
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(vm.VisualizeError, match="no_such_run does not exist"):
    vm.run(config, str(tmp_path / "x"), workdir=missing)
  assert not os.path.exists(missing)
  with pytest.raises(vm.VisualizeError, match="no checkpoints/ directory"):
    vm.load_model(config, str(tmp_path))


def check_files(prefix, num_rows):
  """The PNG as an array, after checking both files' sizes and that they are not blank."""
  png, gif = Image.open(f"{prefix}.png"), Image.open(f"{prefix}.gif")
  assert png.size == (vm.LABEL_WIDTH + 2 + 8 * 130, 2 + num_rows * 130)
  assert gif.n_frames == T and gif.size == (vm.LABEL_WIDTH + 2 + 130, 2 + num_rows * 130)
  colours = lambda picture: len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3),
                                          axis=0))
  assert colours(png) > 10 and colours(gif) > 10
  gif.seek(T - 1)
  assert colours(gif) > 10
  return np.asarray(png.convert("RGB"))


def test_command_line_with_a_run(run_dir, tmp_path):
  prefix = str(tmp_path / "pics" / "run")
  out = subprocess.run(
      [sys.executable, "-m", "vidtx.tools.visualize_masks", f"--config={ROOT}/configs/demo.py",
       *flag_args(), f"--workdir={run_dir}", f"--out={prefix}", "--index=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"wrote {prefix}.png" in out.stdout and f"wrote {prefix}.gif (8 frames)" in out.stdout
  assert "48 of 64 tokens masked (75.0%" in out.stdout
  assert f"checkpoint step {SAVED_STEP}" in out.stdout
  check_files(prefix, 3)


def test_without_a_run_shows_the_same_clip_and_mask(no_run, clip):
  """No --workdir: the eval split is generated on the fly (the same clips, in the same order, as
  the run's), the model is a random init, and the output says so."""
  prefix, stdout = no_run
  assert "randomly initialised" in stdout and "48 of 64 tokens masked (75.0%" in stdout
  image = check_files(prefix, 3)
  config = tiny_config()
  expected = tiles(vm.render(config, clip, vm.keep_for(config, seed=4)), 2)
  np.testing.assert_array_equal(tiles(image, 3)[:2], expected)
