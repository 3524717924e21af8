"""Attention rollout pictures: which parts of the frames a trained model attends to.

  python -m vidtx.tools.visualize_attention --workdir=RUN --video=clip.mp4 --out=PREFIX
  python -m vidtx.tools.visualize_attention --config=configs/demo.py [--workdir=RUN] \
      [--index=0] --out=PREFIX

Writes PREFIX.png (one row of input frames, one row of the same frames under the rollout heat
map) and PREFIX.gif (the two rows, frame by frame). The clip is the video file through the
evaluation preprocessing (its centre view, as `vidtx.predict` sees it) or clip `--index` of the
eval split; without --workdir the model is randomly initialised.

Attention rollout (Abnar & Zuidema, 2020): each attention step's token-mixing matrix A,
averaged over heads, becomes (A + I) / 2 for the residual connection, and the product of these
over the steps in the order they run says how much each input token reaches each output token.
The picture shows that row for the CLS token, or the mean row for mean-pooled models.

A step's mixing matrix is read from its own attend rule (`layers.Attention.attend`) by attending
with the identity as the values: every rule is linear in the values, so this gives the matrix
whatever the rule (joint; TimeSformer's divided space-time, with its CLS token averaged over the
frames; ViViT's factorised self-attention or heads). A temporal step, which leaves the CLS token
out, keeps it unchanged in the product. MAE models roll out their encoder and, for MAR, its
bridging classifier, as inference runs them (not the pre-training decoder).
"""

import contextlib
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from vidtx import cli, configuration, models, predict
from vidtx.data import clips, video_files
from vidtx.models import layers
from vidtx.tools import visualize_masks

def mixing_matrix(attend, q, k, layout):
  """[B, N, N]: row n says how much each token's value makes up token n's output, averaged over
  the heads. q, k: [B, N, heads, head_dim]."""
  b, n, h, e = q.shape
  q, k = q.astype(jnp.float32), k.astype(jnp.float32)
  # The values must have q's head_dim: the identity's columns go through e at a time.
  identity = jnp.eye(n, -(-n // e) * e, dtype=jnp.float32)
  columns = [attend(q, k, jnp.broadcast_to(identity[None, :, None, i:i + e], (b, n, h, e)), layout)
             for i in range(0, identity.shape[1], e)]
  return jnp.concatenate(columns, axis=-1)[..., :n].mean(axis=2)


@contextlib.contextmanager
def recorded_mixing(model):
  """Within the block, every attention of `model` also appends its mixing matrix (of clip 0)
  and its token layout to the yielded list, in the order they run."""
  steps, originals = [], []
  for _, module in nnx.iter_modules(model):
    if isinstance(module, layers.Attention):
      attend = module.attend

      def recording(q, k, v, layout, attend=attend):
        steps.append((np.asarray(mixing_matrix(attend, q, k, layout))[0], layout))
        return attend(q, k, v, layout)
      originals.append((module, attend))
      module.attend = recording
  try:
    yield steps
  finally:
    for module, attend in originals:
      module.attend = attend


def rollout(matrices, num_tokens: int) -> np.ndarray:
  """[N, N]: the product of (A + I) / 2 over the steps, rows renormalised, last step leftmost.
  A matrix over N - 1 tokens (a temporal step without the CLS token) leaves token 0 alone."""
  result = np.eye(num_tokens)
  for a in matrices:
    if a.shape[0] == num_tokens - 1:
      a = np.pad(a, ((1, 0), (1, 0)))
      a[0, 0] = 1.0
    if a.shape != (num_tokens, num_tokens):
      raise ValueError(f"an attention step mixes {a.shape[0]} tokens, not the clip's "
                       f"{num_tokens}: rollout needs every step over the same tokens")
    a = (a + np.eye(num_tokens)) / 2
    result = (a / a.sum(axis=1, keepdims=True)) @ result
  return result


def infer(config, model, clips):
  """Logits (None for pre-training) of the model's inference over every token of clips
  [B, T, H, W, 3], as its family's `rollout_forward` runs it (for MAE: the encoder and, for
  MAR, its bridging classifier; not the pre-training decoder, which attends over mask
  tokens)."""
  return models.family(config.model).rollout_forward(model, clips)


def relevance(config, model, video) -> np.ndarray:
  """[T', H', W'] rollout relevance of each tubelet of one normalised clip [T, H, W, 3]."""
  patch = tuple(config.model.patch_size)
  with recorded_mixing(model) as steps:
    infer(config, model, jnp.asarray(video)[None])
  num_tokens = max(a.shape[0] for a, _ in steps)
  layout = next(layout for a, layout in steps if a.shape[0] == num_tokens)  # CLS included
  r = rollout([a for a, _ in steps], num_tokens)
  row = r[0] if layout.cls_token else r.mean(axis=0)
  _, grid = layout.split(jnp.asarray(row)[None, :, None])  # [1, T', S, 1], CLS dropped
  _, h, w, _ = video.shape
  return np.asarray(grid).reshape(grid.shape[1], h // patch[1], w // patch[2])


def heat_colours(values) -> np.ndarray:
  """[..., 3] in [0, 1]: a blue-green-yellow-red ramp of `values` in [0, 1]."""
  v = np.asarray(values)[..., None]
  centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
  return np.clip(1.5 - np.abs(4 * (v - centres)), 0, 1)


def picture_rows(video, heat, patch, mean, std) -> np.ndarray:
  """uint8 [2, T, H, W, 3]: the frames, and the frames half covered by the heat map (each
  frame under its tubelet's map, scaled by the clip's maximum)."""
  frames = np.clip(visualize_masks.to_pixels(video, mean, std), 0, 1)
  heat = heat / max(float(heat.max()), 1e-12)
  per_frame = np.repeat(heat, patch[0], axis=0)
  per_pixel = per_frame.repeat(patch[1], axis=1).repeat(patch[2], axis=2)
  overlay = 0.5 * frames + 0.5 * heat_colours(per_pixel)
  return visualize_masks.to_uint8(np.stack([frames, overlay]))


def check_supported(config):
  m = config.model
  supported = {name: f.rollout_attentions for name, f in models.FAMILIES.items()
               if f.rollout_attentions}
  if m.name not in supported:
    raise visualize_masks.VisualizeError(
        f"model.name={m.name!r} has no attention rollout: it needs every attention step over "
        "the clip's tokens, which pooling attention (MViT: keys pooled to fewer tokens), "
        f"windows and convolutions are not; the families with one: {supported}")
  if m.attention not in supported.get(m.name, ()):
    raise visualize_masks.VisualizeError(
        f"model.name={m.name!r} with attention={m.attention!r}: attention rollout needs every "
        f"attention over the clip's tokens; supported: {supported}")
  if m.masking == "cell_running":
    raise visualize_masks.VisualizeError(
        "model.masking='cell_running' evaluates on a fixed subset of the tokens; rollout "
        "pictures need them all")


def run(config, out: str, *, workdir=None, video_path=None, index: int = 0, scale: int = 0):
  """Writes <out>.png and <out>.gif; returns their paths."""
  cli.check_writable("out", out, file=True)
  if workdir is not None and not os.path.isdir(workdir):
    raise visualize_masks.VisualizeError(f"--workdir={workdir} does not exist")
  if video_path is not None:
    cli.check_readable("video", video_path)
  configuration.validate(config, num_devices=1, num_processes=1)
  check_supported(config)
  if video_path is not None:
    try:
      views = predict.file_views(config, predict.conversion_settings(config, workdir or ""),
                                 video_path)
    except video_files.VideoError as e:
      raise visualize_masks.VisualizeError(f"--video={video_path}: {e}") from None
    video, what = views[clips.centre_view(config.data)], video_path
  else:
    video, label = visualize_masks.load_clip(config, index, workdir)
    video, what = np.asarray(video), f"clip {index} of the eval split (label {label})"
  model, step = visualize_masks.load_model(config, workdir)
  patch = tuple(config.model.patch_size)
  heat = relevance(config, model, video)
  rows = picture_rows(video, heat, patch, config.data.mean, config.data.std)
  labels = ["input", "attention\nrollout"]
  image = visualize_masks.grid_image(rows, labels, scale)
  frames = visualize_masks.animation(rows, labels, scale)

  print(f"{what}; model {config.model.name} ({config.model.attention} attention), "
        + ("randomly initialised" if step is None else f"checkpoint step {step}"))
  return visualize_masks.write_pictures(out, image, frames)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None and f.workdir is None:
    raise visualize_masks.VisualizeError("give --workdir (a run; its config.json is used) "
                                         "or --config")
  config = f.config if f.config is not None else configuration.from_workdir(f.workdir)
  run(config, f.out, workdir=f.workdir, video_path=f.video, index=f.index, scale=f.scale)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing tools side by side works."""
  cli.define_config(
      "Experiment config file[:variant]; default: the --workdir run's config.", flag_values)
  flags.DEFINE_string("workdir", None, "A trained run; without it the model is random.",
                      flag_values=flag_values)
  flags.DEFINE_string("video", None, "A video file; default: clip --index of the eval split.",
                      flag_values=flag_values)
  flags.DEFINE_integer("index", 0, "Which clip of the eval split, without --video.",
                       flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output path prefix: writes <out>.png and <out>.gif.",
                      flag_values=flag_values)
  flags.DEFINE_integer("scale", 0, "Nearest-neighbour upscale factor; 0: frames of about 128 "
                       "pixels.", flag_values=flag_values)
  flags.mark_flag_as_required("out", flag_values=flag_values)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
