"""ILA on Something-Something v2 (SYSTEMS.md §4): configs/ila_k400.py (ILA-B/16, 8 frames) with
the SSv2 branch's interaction (two dense 3x3 convs, model.ila.interaction="dense") and SSv2's
174 classes; the same recipe (the branch shares the K400 optimizer, schedule and augmentation),
50 epochs of SSv2. Flips swap the left/right class pairs (the reference does not flip).

  python -m vidtx.main --config=configs/ila_ssv2.py --config.init_from=<clip dir> --workdir=...

with <clip dir> from vidtx.tools.convert_weights as in configs/ila_k400.py. ILA-L/14:
--config.model.size=L --config.model.patch_size=1,14,14 --config.model.ila.proj_dim=768.
Variant `cpu`: configs/ila_k400.py:cpu with the dense interaction, segment sampling and flips
that swap the left/right classes, on the built-in data.
"""

from vidtx import configuration


def get_config(arg=None):
  arg = arg or "b16"
  if arg not in ("b16", "cpu"):
    raise ValueError(f"unknown variant {arg!r}: use b16 (the default) or cpu")
  c = configuration.load(configuration.sibling(__file__, f"ila_k400.py:{arg}"))
  c.unlock()
  c.model.ila.interaction = "dense"
  if arg == "cpu":  # the built-in data's 8 classes, 8 frames and eval views
    c.data.sampler, c.data.frame_stride, c.data.flip = "segment", 1, "swap_labels"
    return c
  configuration.use_dataset(c, "ssv2")
  c.data.num_frames, c.data.eval_clips, c.data.eval_crops = 8, 4, 3
  steps_per_epoch = configuration.EPOCH_SIZES["ssv2"] // c.batch_size
  c.total_steps = 50 * steps_per_epoch
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = steps_per_epoch
  return c
