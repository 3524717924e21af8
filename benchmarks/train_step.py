"""Training-step throughput of a config: step time, clips/s, FLOPs, TFLOP/s and MFU.

  python benchmarks/train_step.py --config=configs/videomae_k400.py [--config.batch_size=8] \
      [--config.model.dtype=bfloat16] [--steps=20]

Builds the config's model and optimizer, compiles the one jitted training step, warms up, then
times `--steps` steps on a fixed random batch (no input pipeline: this measures the step). The
FLOPs per step come from the compiled program's cost analysis (forward, backward and optimizer
update). MFU is achieved FLOP/s over the device's peak (the table below; dense bf16 for
accelerators). On a CPU it prints FLOP/s only. Prints one markdown table row per run.

With --torch (needs the `torch` extra) the same architecture, batch and input run in the same
process on CPU torch: forward + backward + an optimizer step of the config's kind (AdamW, or
SGD with its momentum), eager and (--torch_compile) `torch.compile`d, for the vidtx / PyTorch
step-time ratio. Their steps alternate with vidtx's, and the ratio is the median over those
pairs of steps. The twins (`torch_twin`): HF `VideoMAEForVideoClassification` for the plain ViT
configs (model.name="vit", masking none); pytorchvideo's `create_x3d` for X3D (its hub's
x3d_xs ... x3d_l, built for the config's clip, its softmax off); torchvision's r2plus1d_18,
r3d_18 and mc3_18 for those sizes of model.name="r2plus1d". Each at its full widths.

With --device_augment the preprocessing the train step runs on the device with
data.host_augment=False (RandAugment, colour jitter, normalising, erasing of the config:
`vidtx.data.on_device.train_clips`) is also timed alone on the same batch, in turn with the
steps, and printed as a share of the step: the accelerator time that moving augmentation off
the host costs.
"""

from vidtx import builder, host

host.keep_freed_memory()  # as vidtx.main does, before any import starts a thread

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vidtx import train
from vidtx.data import on_device
from vidtx.models import layers

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def step_flops(setup, args) -> float:
  """FLOPs of one training step, counted with XLA's attention (`layers.xla_attention`)."""
  with layers.xla_attention():  # a new jitted step, so that it is traced again
    lowered = train.make_train_step(setup).lower(*args)
  return float(lowered.compile().cost_analysis()["flops"])


def measure(config, steps: int, warmup: int = 3, others: dict | None = None) -> dict:
  """Times the config's training step. `others` (name: a callable running one step of
  something else) are timed in turn with it, step by step, so that a drift in the machine's
  speed (a shared or throttled CPU) reaches both sides of a comparison alike."""
  others = others or {}
  setup = builder.build(config)
  d = config.data
  rng = np.random.default_rng(0)
  host_batch = {
      "video": rng.integers(0, 256, (config.batch_size, d.num_frames, d.crop_size, d.crop_size,
                                     3), np.uint8),  # what the input pipeline sends
      "label": (np.arange(config.batch_size) % d.num_classes).astype(np.int32)}
  with jax.set_mesh(setup.mesh):
    state = builder.init_state(setup)
    step = train.make_train_step(setup)
    batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in host_batch.items()}
    key = np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32)
    go_on = train.stop_flags(setup.mesh, False)
    start = time.perf_counter()
    compiled = step.lower(state, batch, key, go_on).compile()
    compile_s = time.perf_counter() - start
    fused_attention = "__cudnn$fmha" in compiled.as_text()
    flops = step_flops(setup, (state, batch, key, go_on)) if fused_attention else float(
        compiled.cost_analysis()["flops"])

    def run_vidtx():
      nonlocal state
      state, metrics = step(state, batch, key, go_on)
      jax.block_until_ready(metrics)

    runs = {"vidtx": run_vidtx, **others}
    for _ in range(warmup):
      for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(steps):
      for name, run in runs.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
  median = statistics.median(times["vidtx"])
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = PEAK_FLOPS.get(device.device_kind)
  achieved = flops / median / jax.device_count() if flops else 0.0
  return {"device": device.device_kind, "devices": jax.device_count(), "compile_s": compile_s,
          "attention": "cuDNN fused" if fused_attention else "XLA",
          "step_ms": 1000 * median, "p10_ms": 1000 * float(np.percentile(times["vidtx"], 10)),
          "p90_ms": 1000 * float(np.percentile(times["vidtx"], 90)),
          "clips_per_s": config.batch_size / median, "tflop_per_step": flops / 1e12,
          "tflops_per_device": achieved / 1e12, "mfu": achieved / peak if peak else None,
          "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
          "others": {name: (1000 * statistics.median(times[name]),  # ms, vidtx / it
                            statistics.median(np.divide(times["vidtx"], times[name])))
                     for name in others}}


def torch_twin(config):
  """(the PyTorch model of the config's architecture in train mode, a random input batch in its
  layout, (model, input) -> logits, its name) for `torch_step`."""
  import torch
  d, m = config.data, config.model
  if m.name == "vit" and m.masking == "none":
    import transformers
    from vidtx.models import vit
    width, depth, heads = vit.size(m)
    pt, ph, _ = m.patch_size
    hf_config = transformers.VideoMAEConfig(
        image_size=d.crop_size, patch_size=ph, tubelet_size=pt, num_frames=d.num_frames,
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=int(width * m.mlp_ratio), use_mean_pooling=True,
        num_labels=d.num_classes, qkv_bias=m.qkv_bias)
    model = transformers.VideoMAEForVideoClassification(hf_config)
    video = torch.randn(config.batch_size, d.num_frames, 3, d.crop_size, d.crop_size)
    return model.train(), video, lambda model, x: model(pixel_values=x).logits, "HF VideoMAE"
  video = torch.randn(config.batch_size, 3, d.num_frames, d.crop_size, d.crop_size)
  if m.name == "x3d" and not (m.x3d.stage_widths or m.x3d.stage_blocks) and (
      m.x3d.head_width == 2048):
    from pytorchvideo.models.x3d import create_x3d
    from vidtx.models import x3d
    model = create_x3d(input_clip_length=d.num_frames, input_crop_size=d.crop_size,
                       model_num_class=d.num_classes, dropout_rate=m.head_dropout,
                       depth_factor=x3d.DEPTH_FACTORS[m.size], head_activation=None)
    return model.train(), video, lambda model, x: model(x), f"pytorchvideo x3d_{m.size}"
  if m.name == "r2plus1d" and m.size in ("r2plus1d_18", "r3d_18", "mc3_18") and not (
      m.r2plus1d.stage_widths or m.r2plus1d.stage_blocks):
    import torchvision
    model = getattr(torchvision.models.video, m.size)(num_classes=d.num_classes)
    return model.train(), video, lambda model, x: model(x), f"torchvision {m.size}"
  raise ValueError("--torch has PyTorch twins for plain ViT configs (model.name='vit', masking "
                   "none), X3D and torchvision's R(2+1)D-18 / R3D-18 / MC3-18, at their full "
                   f"widths: not model.name={m.name!r} size {m.size!r} as configured")


def torch_step(config, compiled: bool):
  """One training step of `torch_twin`'s model: forward, cross-entropy, backward, and the
  config's optimizer (AdamW, or SGD with its momentum and Nesterov setting); and the twin's
  name."""
  import sys
  # The CUDA torch wheel's triton crashes the process when it loads after TensorFlow (which
  # vidtx imported); torch.compile on the CPU does not need it.
  sys.modules.setdefault("triton", None)
  import torch
  model, video, logits_of, name = torch_twin(config)
  o = config.optim
  if o.name == "sgd":
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov, weight_decay=o.weight_decay)
  else:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  labels = torch.arange(config.batch_size) % config.data.num_classes

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(logits_of(model, video), labels)
    loss.backward()
    optimizer.step()

  return (torch.compile(step) if compiled else step), name


def device_augment(config):
  """One call of the device's train preprocessing (host_augment=False) on a uint8 batch."""
  d = config.data.copy_and_resolve_references()
  d.host_augment = False
  video = jax.device_put(np.random.default_rng(1).integers(
      0, 256, (config.batch_size, d.num_frames, d.crop_size, d.crop_size, 3), np.uint8))
  augment = jax.jit(lambda video, key: on_device.train_clips(d, video, key))
  key = jax.random.key(0)
  return lambda: jax.block_until_ready(augment(video, key))


def main(argv):
  del argv
  c = flags.FLAGS.config
  others = {}
  if flags.FLAGS.device_augment:
    others["device augmentation"] = device_augment(c)
  if flags.FLAGS.torch:
    others["eager"], twin = torch_step(c, compiled=False)
    if flags.FLAGS.torch_compile:
      others["torch.compile"], _ = torch_step(c, compiled=True)
  r = measure(c, flags.FLAGS.steps, others=others)
  name = (f"{c.model.name} {c.model.size} {c.data.num_frames}x{c.data.crop_size}, masking "
          f"{c.model.masking} {c.model.mask_ratio}, batch {c.batch_size}, {c.model.dtype}")
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (CPU)"
  memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] else "n/a"
  print(f"jax {jax.__version__}, {r['devices']} x {r['device']}; compile {r['compile_s']:.1f} s; "
        f"{r['attention']} attention")
  print("| config | step ms (median, p10-p90) | clips/s | TFLOP/step | TFLOP/s/device | MFU "
        "| peak GiB |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {name} | {r['step_ms']:.1f} ({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) | "
        f"{r['clips_per_s']:.1f} | {r['tflop_per_step']:.3f} | {r['tflops_per_device']:.3f} | "
        f"{mfu} | {memory} |")
  if "device augmentation" in r["others"]:
    ms, ratio = r["others"].pop("device augmentation")
    d = c.data
    print(f"\ndevice augmentation alone (RandAugment {d.randaugment_layers} layers m"
          f"{d.randaugment_magnitude:g}, colour jitter {d.color_jitter:g}, erasing "
          f"{d.random_erasing:g}, normalising): {ms:.1f} ms per batch, {100 / ratio:.1f}% of "
          "the step (median of the pairs)")
  if r["others"]:
    import torch
    print(f"\nsame model, batch and input in PyTorch {torch.__version__} ({twin}), "
          f"{torch.get_num_threads()} threads, its steps taken in turn with vidtx's:")
    print("| variant | step ms (median) | vidtx / this (median of the step pairs) |")
    print("|---|---|---|")
    for variant, (ms, ratio) in r["others"].items():
      print(f"| {variant} | {ms:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 20, "Timed steps after warm-up.")
  flags.DEFINE_bool("torch", False, "Also time the model's PyTorch twin on CPU, same batch.")
  flags.DEFINE_bool("torch_compile", False, "With --torch, also time torch.compile.")
  flags.DEFINE_bool("device_augment", False, "Also time the train step's device augmentation "
                    "(data.host_augment=False) alone, as a share of the step.")
  flags.mark_flag_as_required("config")
  app.run(main)
