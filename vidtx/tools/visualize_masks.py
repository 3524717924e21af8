"""A picture of one clip, its token mask and a masked model's reconstruction (PNG grid + GIF).

  python -m vidtx.tools.visualize_masks --config=configs/demo.py --out=/tmp/masks \
      [--workdir=/tmp/run] [--index=0] [--seed=0] [--config.model.masking=tube ...]

Rows: the input frames; the same frames with the masked tubelets filled grey; and, for a masked
model (one whose family reconstructs, `Family.reconstruct`), its reconstruction: visible tubelets
from the input, masked ones from the decoder. Columns: the clip's frames. The GIF shows the same rows stacked, one GIF frame
per video frame. The clip is clip `--index` of the eval split (centre crop, as evaluation sees
it), de-normalised back to pixels.

The mask is the config's schedule: random ones (random, tube) drawn from `--seed`, cell_running
in its fixed test-time form. With `--workdir` the run's latest checkpoint and data are used;
without it the model is randomly initialised (the masks are right, the reconstruction is not),
and synthetic data is generated for the occasion (the eval split, one training clip) in a
temporary directory.
"""

import contextlib
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from PIL import Image, ImageDraw, ImageFont

from vidtx import builder, cli, configuration, data, errors, models
from vidtx.data import on_device, synthetic
from vidtx.models import layers, masking


GREY = 128  # fill of the masked tubelets
BACKGROUND = 255  # separators and the label column
SEP = 2  # pixels between tiles
LABEL_WIDTH = 128  # the column of row labels on the left
MIN_TILE = 128  # auto scale: frames are upscaled to at least this many pixels
GIF_FRAME_MS = 400
RECON_EPS = 1e-6  # as in mae.pixel_targets


class VisualizeError(errors.FlagError):
  """A bad flag or a missing run; the message names the value and the fix."""


def to_pixels(video, mean, std) -> np.ndarray:
  """Undoes the input normalisation: float [..., 3] in pixel units (0..1, not clipped)."""
  return np.asarray(video, np.float64) * np.asarray(std) + np.asarray(mean)


def to_uint8(pixels) -> np.ndarray:
  return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def patchify(frames, patch) -> np.ndarray:
  """[T, H, W, C] -> [N, pt*ph*pw, C]: one clip's tubelets (`layers.tubelets`)."""
  return layers.tubelets(np.asarray(frames)[None], patch)[0]


def unpatchify(tubelets, grid, patch) -> np.ndarray:
  """[N, pt*ph*pw, C] -> [T, H, W, C], the inverse of `patchify`."""
  (gt, gh, gw), (pt, ph, pw) = grid, patch
  x = tubelets.reshape(gt, gh, gw, pt, ph, pw, -1).transpose(0, 3, 1, 4, 2, 5, 6)
  return x.reshape(gt * pt, gh * ph, gw * pw, -1)


def visible_pixels(keep, grid, patch) -> np.ndarray:
  """bool [T, H, W]: True on the pixels of the visible tubelets `keep` [K]."""
  flags_ = np.zeros(math.prod(grid), bool)
  flags_[np.asarray(keep)] = True
  x = flags_.reshape(grid)
  for axis, size in enumerate(patch):
    x = np.repeat(x, size, axis=axis)
  return x


def denormalize(pred, pixels, patch, indices) -> np.ndarray:
  """Pixels [M, pt*ph*pw, 3] (not clipped) of the tubelets `indices` [M] from the decoder's
  per-tubelet normalised predictions `pred` [M, pt*ph*pw*3].

  The decoder's targets standardise each tubelet and channel; this undoes it with the statistics
  of the original clip `pixels` [T, H, W, 3] (as VideoMAE's visualisation does): the decoder
  predicts shapes and contrasts, the clip supplies each tubelet's brightness and scale. So even
  an untrained decoder's tubelets have their true mean colour: judge a reconstruction by detail.
  """
  tubelets = patchify(np.asarray(pixels, np.float64), patch)[np.asarray(indices)]
  mean = tubelets.mean(axis=1, keepdims=True)
  std = tubelets.std(axis=1, ddof=1, keepdims=True)
  return np.asarray(pred, np.float64).reshape(tubelets.shape) * (std + RECON_EPS) + mean


def reconstruction(config, model, video, keep) -> np.ndarray:
  """Pixels [T, H, W, 3] in [0, 1] of `model`'s reconstruction of the normalised clip `video`
  [T, H, W, 3]: the input at the visible tubelets `keep` [K], the decoded ones elsewhere."""
  patch = tuple(config.model.patch_size)
  grid = _grid(video.shape, patch)
  # One compiled call: op-by-op dispatch of a whole ViT is several times slower.
  decode = nnx.jit(models.family(config.model).reconstruct)
  pred, masked = decode(model, jnp.asarray(video)[None], jnp.asarray(keep)[None])
  pred, masked = np.asarray(pred)[0], np.asarray(masked)[0]
  pixels = to_pixels(video, config.data.mean, config.data.std)
  tubelets = patchify(pixels, patch)
  tubelets[masked] = denormalize(pred, pixels, patch, masked)
  return np.clip(unpatchify(tubelets, grid, patch), 0, 1)


def _grid(video_shape, patch):
  t, h, w = video_shape[-4:-1]
  return (t // patch[0], h // patch[1], w // patch[2])


def keep_for(config: ml_collections.ConfigDict, seed: int = 0) -> np.ndarray:
  """Visible-token indices [K] of one clip under the config's masking schedule: a draw from
  `seed` for random schedules, the fixed test-time form for cell_running (and none)."""
  name = config.model.masking
  key = None if name in masking.FIXED_AT_TEST else jax.random.key(seed)
  grid = masking.token_grid(config.model, config.data)
  return np.asarray(masking.keep_indices(name, key, 1, grid, config.model.mask_ratio))[0]


def frame_rows(config, video, keep, model=None, *, step=None) -> tuple[np.ndarray, list[str]]:
  """(uint8 [R, T, H, W, 3], R row labels): input, masked, and with a model its reconstruction.

  `video` [T, H, W, 3] is one normalised clip, `keep` [K] its visible tokens, `step` the
  checkpoint step of `model` for its label (None: a random init).
  """
  video = np.asarray(video, np.float32)
  patch = tuple(config.model.patch_size)
  grid = _grid(video.shape, patch)
  if grid != masking.token_grid(config.model, config.data):
    raise VisualizeError(f"clip of shape {video.shape} does not match config.data (num_frames="
                         f"{config.data.num_frames}, crop_size={config.data.crop_size})")
  keep = np.asarray(keep).reshape(-1)
  visible = visible_pixels(keep, grid, patch)[..., None]
  frames = to_uint8(to_pixels(video, config.data.mean, config.data.std))
  num_tokens = math.prod(grid)
  masked_count = num_tokens - len(keep)
  rows = [frames, np.where(visible, frames, np.uint8(GREY))]
  labels = ["input", f"masked\n{config.model.masking}: "
            f"{masked_count}/{num_tokens}\ntokens ({masked_count / num_tokens:.0%})"]
  if model is not None:
    recon = to_uint8(reconstruction(config, model, video, keep))
    rows.append(np.where(visible, frames, recon))
    labels.append("reconstruction\n" + ("(untrained:\nrandom init)" if step is None
                                        else f"(step {step})"))
  return np.stack(rows), labels


def auto_scale(frame_size: int) -> int:
  return max(1, math.ceil(MIN_TILE / frame_size))


def tile_origin(row: int, col: int, tile_hw: tuple[int, int]) -> tuple[int, int]:
  """(y, x) of the top-left pixel of tile (row, col) of tiles [tile_h, tile_w] (upscaled)."""
  return SEP + row * (tile_hw[0] + SEP), LABEL_WIDTH + SEP + col * (tile_hw[1] + SEP)


def _font():
  try:
    return ImageFont.load_default(size=13)
  except (OSError, ImportError):  # Pillow without FreeType: the small bitmap font
    return ImageFont.load_default()


def _assemble(rows, labels, scale) -> np.ndarray:
  """Tiles uint8 [R, C, h, w, 3] upscaled by `scale`, separated by SEP, labels on the left."""
  r, c, h, w, _ = rows.shape
  tile_hw = (h * scale, w * scale)
  height, width = tile_origin(r, c, tile_hw)
  image = np.full((height, width, 3), BACKGROUND, np.uint8)
  big = rows.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest neighbour: tubelet edges stay
  for i in range(r):
    for j in range(c):
      y, x = tile_origin(i, j, tile_hw)
      image[y:y + tile_hw[0], x:x + tile_hw[1]] = big[i, j]
  picture = Image.fromarray(image)
  draw = ImageDraw.Draw(picture)
  for i, label in enumerate(labels):
    y, _ = tile_origin(i, 0, tile_hw)
    draw.multiline_text((6, y + 4), label, fill=(0, 0, 0), font=_font(), spacing=3)
  return np.asarray(picture)


def grid_image(rows, labels, scale: int = 0) -> np.ndarray:
  """The PNG: uint8 [height, width, 3], one row of tiles per row of `frame_rows`, one column
  per frame, frames upscaled by `scale` (0: auto) with nearest neighbour. Tile (r, t) starts at
  `tile_origin(r, t, (H * scale, W * scale))`."""
  return _assemble(rows, labels, scale or auto_scale(max(rows.shape[2:4])))


def animation(rows, labels, scale: int = 0) -> list[np.ndarray]:
  """The GIF's frames: per video frame, its tiles of `grid_image` stacked vertically."""
  scale = scale or auto_scale(max(rows.shape[2:4]))
  num_frames = rows.shape[1]
  return [_assemble(rows[:, t:t + 1], [f"{labels[0]}\nframe {t + 1}/{num_frames}", *labels[1:]],
                    scale) for t in range(num_frames)]


def render(config, video, keep, model=None, *, step=None, scale: int = 0) -> np.ndarray:
  """`grid_image` of `frame_rows`: the picture of one normalised clip `video` [T, H, W, 3]
  with visible tokens `keep` [K] (and `model`'s reconstruction when given)."""
  return grid_image(*frame_rows(config, video, keep, model, step=step), scale)


@contextlib.contextmanager
def _data_dir(data_config, workdir):
  """The directory holding the eval split: the run's, config.data.data_dir, or (synthetic data,
  no run) a temporary one where the synthetic eval split is generated."""
  if workdir is not None:
    yield data.prepare(data_config, workdir)
  elif data_config.data_dir or data_config.name != data.SYNTHETIC:
    yield data.prepare(data_config, "")
  else:
    with tempfile.TemporaryDirectory(prefix="vidtx_visualize_") as tmp:
      # Clip i of a split depends only on (seed, split, i), so these eval clips are a run's;
      # one training clip is enough.
      synthetic.write_dataset(tmp, **dict(data_config.synthetic, num_train=1))
      yield tmp


def load_clip(config, index: int, workdir=None) -> tuple[np.ndarray, int]:
  """(video [T, H, W, 3] normalised float32, label) of clip `index` of the eval split."""
  split = config.data.eval_split
  if index < 0:
    raise VisualizeError(f"--index={index} is negative; give a clip number from 0")
  with _data_dir(config.data, workdir) as data_dir:
    count = data.num_examples(config.data, split, data_dir)
    if index >= count:
      raise VisualizeError(f"--index={index} is beyond the {count} clips of the {split!r} split "
                           f"in {data_dir}; use --index=0..{count - 1}")
    batch_size = 16
    batches = data.build(config.data, split, train=False, batch_size=batch_size, seed=config.seed,
                         data_dir=data_dir)
    for i, batch in enumerate(batches):
      if i == index // batch_size:
        video = on_device.eval_clips(config.data, batch["video"][index % batch_size])
        return np.asarray(video), int(batch["label"][index % batch_size])
  raise AssertionError(f"the {split!r} split yielded fewer than {index + 1} clips")


def load_model(config, workdir=None):
  """(model, step): the latest checkpoint of the run in `workdir`, or (no workdir) a random
  initialisation from config.seed and step None."""
  if workdir is None:
    configuration.validate(config, num_devices=1, num_processes=1)
    # Compiled: initialising parameter by parameter is slower (the values are the same).
    return nnx.jit(lambda: models.build(config.model, config.data,
                                        nnx.Rngs(params=config.seed)))(), None
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):  # checked first: Checkpointer would create the directory
    raise VisualizeError(f"--workdir={workdir} has no checkpoints/ directory: give the workdir "
                         "of a trained run, or leave --workdir out to see the masks on a "
                         "randomly initialised model")
  try:
    model, step = builder.restore_model(config, workdir)
  except FileNotFoundError:
    raise VisualizeError(f"--workdir={workdir}: no checkpoint in {ckpt_dir} yet; train first, "
                         "or leave --workdir out for a randomly initialised model") from None
  # One clip needs no sharding: gather the parameters onto one device.
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, jax.devices()[0])), step


def _check_workdir(workdir):
  if workdir is not None and not os.path.isdir(workdir):
    # data.prepare would otherwise generate a dataset into a mistyped path.
    raise VisualizeError(f"--workdir={workdir} does not exist; give the workdir of a trained run "
                         "or leave --workdir out")


def write_pictures(out: str, image, frames) -> tuple[str, str]:
  """Writes `image` as <out>.png and `frames` as the looping <out>.gif; returns their paths and
  prints their sizes."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  png, gif = f"{out}.png", f"{out}.gif"
  Image.fromarray(image).save(png)
  pictures = [Image.fromarray(f) for f in frames]
  pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=GIF_FRAME_MS, loop=0)
  print(f"wrote {png} ({image.shape[1]}x{image.shape[0]} pixels)")
  print(f"wrote {gif} ({len(frames)} frames)")
  return png, gif


def run(config, out: str, *, workdir=None, index: int = 0, seed: int = 0, scale: int = 0):
  """Writes <out>.png and <out>.gif; returns their paths."""
  cli.check_writable("out", out, file=True)
  _check_workdir(workdir)
  configuration.validate(config, num_devices=1, num_processes=1)
  if scale < 0:
    raise VisualizeError(f"--scale={scale} is negative; give a factor >= 1, or 0 for auto")
  video, label = load_clip(config, index, workdir)
  model, step = None, None
  if models.family(config.model).reconstruct is not None:
    model, step = load_model(config, workdir)
  keep = keep_for(config, seed)
  rows, labels = frame_rows(config, video, keep, model, step=step)
  image, frames = grid_image(rows, labels, scale), animation(rows, labels, scale)

  num_tokens = math.prod(masking.token_grid(config.model, config.data))
  masked = num_tokens - len(keep)
  name = (f" ({synthetic.CLASSES[label]})"
          if config.data.name == data.SYNTHETIC and 0 <= label < len(synthetic.CLASSES) else "")
  print(f"clip {index} of the {config.data.eval_split!r} split, label {label}{name}")
  print(f"mask: {config.model.masking}, {masked} of {num_tokens} tokens masked "
        f"({masked / num_tokens:.1%}; config.model.mask_ratio={config.model.mask_ratio})")
  if model is None:
    print(f"model: {config.model.name} reconstructs nothing: input and mask rows only")
  elif step is None:
    print("model: randomly initialised (no --workdir): the reconstruction row is untrained")
  else:
    print(f"model: checkpoint step {step} of {workdir}")
  return write_pictures(out, image, frames)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  run(f.config, f.out, workdir=f.workdir, index=f.index, seed=f.seed, scale=f.scale)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """The command line's flags; defined only when run as a program, so that importing this
  module next to another tool does not define --config twice."""
  cli.define_config(
      "Experiment config file[:variant]; override fields with --config.<f>=<v>.", flag_values)
  flags.DEFINE_string(
      "workdir", None, "A trained run: its latest checkpoint and its data are used. Without it "
      "the model is randomly initialised.", flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output path prefix: writes <out>.png and <out>.gif.",
                      flag_values=flag_values)
  flags.DEFINE_integer("index", 0, "Which clip of the eval split to show.",
                       flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of random masking schedules (random, tube).",
                       flag_values=flag_values)
  flags.DEFINE_integer("scale", 0, "Nearest-neighbour upscale factor; 0: frames of about 128 "
                       "pixels.", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "out"], flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
