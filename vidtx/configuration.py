"""The config: every shared field documented once, and the checks that run before any work
starts.

Experiment files in `configs/` start from `base()` and change what they need. Configs are
locked, so a misspelt field (in a file or as `--config.<field>=<value>`) is an error. The
fields of a model family's own section, config.model.<family>, are documented in its model file
(vidtx/models/<family>.py); `base()` holds every family's section with its defaults.
"""

import importlib.util
import json
import os

import jax
import ml_collections

from vidtx import errors, models


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # root of all randomness: init, drop path, data order and augmentation

  c.model = ml_collections.ConfigDict()
  # The model family: a key of vidtx.models.FAMILIES (the README's table of configs shows them
  # all). A family's own fields are in config.model.<name>, documented in its model file
  # (vidtx/models/<name>.py). The fields below are shared: a family reads those in its
  # FAMILY.reads, and one it does not read stops the run if it is changed, rather than being
  # silently ignored.
  c.model.name = "vit"
  # One of the family's sizes (FAMILY.sizes; the ViT-based families: Ti / S / B / L / H, the
  # width, depth and heads of the standard ViT sizes).
  c.model.size = "B"
  c.model.width = 0  # > 0 overrides the size's width
  c.model.depth = 0  # > 0 overrides the size's depth
  c.model.num_heads = 0  # > 0 overrides the size's number of heads
  c.model.mlp_ratio = 4.0
  c.model.patch_size = (2, 16, 16)  # tubelet (t, h, w); must divide num_frames and crop_size
  # Learned q and v biases (VideoMAE); families whose references have a k bias add it.
  c.model.qkv_bias = True
  # CLIP's image-tower conventions (a bias-free patch embedding, ln_pre, QuickGELU, LayerNorm eps
  # 1e-5), to start a ViT-based family from a CLIP checkpoint (convert_weights, then init_from).
  # A vit then wants vit.pos_embed="learned", vit.pool="cls".
  c.model.clip_style = False
  # Space-time attention: which tokens attend to which. Each family takes the values in its
  # FAMILY.attentions (its model file says what each means for it):
  #   "joint": every token attends to every token; the only one masking works with.
  #   "divided": time (+ temporal_fc), then space, in each block (TimeSformer).
  #   "space_only": each frame apart (CLIP-style towers, per-frame backbones).
  #   "factorised_encoder": a spatial transformer per time slice, then a temporal one over
  #     their CLS tokens (ViViT model 2).
  #   "factorised_self": space, then time, each with its own LN and residual (ViViT model 3).
  #   "factorised_dot": half the heads attend over time, half over space (ViViT model 4).
  #   "patch_shift": TPS's temporal patch shift in the attention (TPS's Swin; a ViT's blocks).
  c.model.attention = "joint"
  # Recompute each block in the backward pass to save activation memory: "none"; "full" (keep
  # only block inputs); "dots" (also keep the matmul outputs without batch dims).
  c.model.remat = "none"
  c.model.drop_path = 0.0  # stochastic depth of the last block; linear from 0
  c.model.head_dropout = 0.0
  c.model.head_init_scale = 1.0  # scales the head's trunc-normal(0.02) init (VideoMAE: 0.001)
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators. Params stay float32.
  # Token masking at train time (vidtx.models.masking): none / random / tube / cell_running.
  # Evaluation sees all tokens, except cell_running, which uses its fixed test-time schedule.
  c.model.masking = "none"
  c.model.mask_ratio = 0.0  # fraction of tokens masked; cell_running: 0.25, 0.5 or 0.75
  # BatchNorm settings of the convolutional families (documented in
  # vidtx.models.batchnorm_section): momentum, eps, group_size, frozen, precise_batches.
  c.model.bn = models.batchnorm_section()
  # config.model.<family>: each family's own fields, with its defaults (read only when
  # model.name is that family).
  for name, section in models.sections().items():
    c.model[name] = section

  c.data = ml_collections.ConfigDict()
  # "synthetic_motion" is generated; the others are DMVR TFRecord shards in data_dir, written by
  # vidtx.data.convert_videos: "kinetics400", "kinetics600", "ssv2" (their standard settings are
  # in DATASETS) or "custom" (your own videos). num_classes must match the labels.json and
  # metadata.json there. "tfds:<name>" reads a prepared TFDS video dataset (data_dir: its TFDS
  # data_dir, "" for the default) through the same samplers and transforms; num_classes must
  # match its label feature.
  c.data.name = "synthetic_motion"
  # "tfds:" datasets: the names of their tfds.features.Video and ClassLabel features.
  c.data.tfds_features = ("video", "label")
  # DMVR TFRecord shards; "" for synthetic_motion: <workdir>/data/synthetic_motion
  c.data.data_dir = ""
  c.data.num_classes = 8
  c.data.num_frames = 8  # frames sampled per clip
  # Which frames (vidtx.data.transforms). "dense": num_frames frames frame_stride apart, at a
  # random start (train) or centred (eval); a video shorter than the window loops (0 1 2 0 1).
  # "segment" (TSN; SSv2): the video cut into num_frames equal segments, a random frame of
  # each (train) or the middle one (eval); a video with fewer frames repeats them (0 0 1 2 2).
  c.data.sampler = "dense"
  c.data.frame_stride = 1  # distance between sampled frames ("dense"; must be 1 for "segment")
  c.data.min_resize = 36  # short side after resizing (train_crop="random"; eval, see eval_resize)
  c.data.max_resize = 0  # > 0: scale jitter, train short side uniform in [min_resize, max_resize]
  c.data.crop_size = 32  # side of the square train crop and eval crops
  # "random": short side to min_resize, then a random crop. "random_resized": Inception-style
  # (VideoMAE fine-tuning): a box of crop_scale x the frame area with aspect ratio (w / h) in
  # crop_ratio, taken from the decoded frames and resized to crop_size.
  c.data.train_crop = "random"
  c.data.crop_scale = (0.08, 1.0)
  c.data.crop_ratio = (0.75, 4 / 3)
  # Horizontal flips at train, p=1/2: "none"; "random"; "swap_labels": flip and relabel the
  # left/right class pairs named in <data_dir>/labels.json ("...from left to right" <-> "...from
  # right to left"); clips of classes naming left or right without a partner are not flipped.
  c.data.flip = "none"
  # RandAugment (timm's increasing ops, VideoMAE: 4 layers, magnitude 7, std 0.5), the same ops
  # and magnitudes on every frame. 0 layers: off.
  c.data.randaugment_layers = 0
  c.data.randaugment_magnitude = 7.0  # 0-10
  # Brightness/contrast/saturation factors in 1 +- strength, hue +- strength/4; 0: off.
  c.data.color_jitter = 0.0
  c.data.random_erasing = 0.0  # probability of one noise box, same on all frames (VideoMAE 0.25)
  # Where RandAugment and colour jitter run, the most expensive work per clip: False (default)
  # in the train step on the accelerator, so one host core feeds about twice the clips (README,
  # Scaling); True on the host's CPU, for runs whose accelerator time is the scarcer resource.
  # Either way crops and flips run on the host, normalising and random erasing on the device.
  c.data.host_augment = False
  # Each sampled record gives this many clips, consecutive in the batch, each with its own
  # augmentation of the same frames (VideoMAE's num_sample 2). batch_size counts clips; an
  # epoch is one pass over the records (repeated_aug x records clips). 1: off.
  c.data.repeated_aug = 1
  # Mixup / CutMix on the batch in the train step (vidtx.data.mixup): Beta(alpha) mixing
  # weights, 0: off (VideoMAE: 0.8 / 1.0); with both on, CutMix with mix_switch_prob.
  c.data.mixup_alpha = 0.0
  c.data.cutmix_alpha = 0.0
  c.data.mix_switch_prob = 0.5
  # Evaluation views per video: eval_clips clips evenly spaced in time (dense: starts from 0 to
  # the last start; segment: shifted positions in each segment) x eval_crops crops (1: centre;
  # 3: both ends and centre of the long side). Metrics average the softmax over the views.
  c.data.eval_clips = 1
  c.data.eval_crops = 1
  c.data.eval_resize = 0  # short side before the eval crops; 0: min_resize (VideoMAE: crop_size)
  # Side of the eval crops; 0: crop_size. Larger only for the fully convolutional families
  # (PySlowFast's 3 crops of 256; X3D's test crop, e.g. 182 after training on 160).
  c.data.eval_crop_size = 0
  c.data.mean = (0.485, 0.456, 0.406)  # per-channel normalisation of [0, 1] pixels
  c.data.std = (0.229, 0.224, 0.225)
  c.data.shuffle_buffer = 1024
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.synthetic = ml_collections.ConfigDict()  # used when name == "synthetic_motion"
  c.data.synthetic.num_train = 4096
  c.data.synthetic.num_val = 512
  c.data.synthetic.num_frames = 16  # frames stored per clip
  c.data.synthetic.size = 40  # stored frame height and width
  c.data.synthetic.seed = 0
  c.data.synthetic.num_shards = 8

  c.batch_size = 64  # global batch: all hosts and devices together
  # Videos per evaluation batch (all hosts); 0: batch_size. Each holds data.eval_clips x
  # data.eval_crops views, so multi-view evaluation usually wants a smaller one.
  c.eval_batch_size = 0
  # Split each batch into this many micro-batches, run one after the other, gradients summed:
  # the memory of batch_size / grad_accum_steps, the update of batch_size.
  c.grad_accum_steps = 1
  c.total_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 500  # also evaluates at the end; 0: only at the end
  c.checkpoint_every_steps = 500  # also saves at the end and on SIGTERM
  c.keep_checkpoints = 3  # keep the last N
  c.label_smoothing = 0.0
  # Start from another run's weights: a workdir (its latest checkpoint) or a checkpoint step
  # directory. Parameters are copied by name where the shapes agree (a VideoMAE pre-training
  # run initialises MAR or a ViT fine-tune); the rest keep their fresh init and are logged.
  # Ignored when the workdir already holds a checkpoint (a resume).
  c.init_from = ""
  # An image model's one-frame patch kernel inflated over the tubelet's frames: "average"
  # (repeated / t: a clip of equal frames gives the image's tokens) or "central" (zeros but
  # the central frame). Position embeddings are resized and tiled over time
  # (vidtx.weights.inflate).
  c.init_from_inflation = "average"

  c.optim = ml_collections.ConfigDict()
  # "adamw" (decoupled weight decay, b1 and b2) or "sgd" (torch.optim.SGD: weight decay added
  # to the gradient, then momentum; PySlowFast's recipes, e.g. VTN).
  c.optim.name = "adamw"
  c.optim.lr = 1e-3  # peak learning rate
  c.optim.warmup_steps = 100  # linear warm-up from warmup_init_lr
  c.optim.warmup_init_lr = 0.0
  c.optim.min_lr = 0.0  # cosine decays to this at total_steps
  # Instead of the cosine, a step schedule: ((fraction of total_steps, lr factor), ...), e.g.
  # VTN's ((13 / 25, 0.1), (24 / 25, 0.01)): lr x 0.1 from epoch 13 of 25, x 0.01 from 24.
  c.optim.lr_drops = ()
  # Decoupled (adamw) or added to the gradient (sgd); never on biases, norms, pos. embeddings
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.momentum = 0.9  # optim.name="sgd"
  c.optim.nesterov = True  # optim.name="sgd"; PySlowFast's default
  c.optim.grad_clip = 0.0  # clip the global gradient norm; 0: off
  # Layer-wise lr decay (BEiT/VideoMAE): lr x decay^(L + 1 - i) with i = 0 for the embeddings,
  # i = n + 1 for encoder block n and L + 1 for everything after the encoder. 1.0: off.
  c.optim.layer_decay = 1.0
  # Parameter groups, by regular expressions searched in a parameter's path (names joined by
  # "/", e.g. "encoder/blocks/3/attn/qkv", "head/kernel"; see vidtx.optim.param_path). A
  # pattern that matches no parameter stops the run at start.
  # lr_scales: (pattern, scale) pairs; the first match multiplies that parameter's lr (and its
  # weight decay), e.g. (("^backbone/", 0.1),) trains a pre-trained backbone at a tenth of the lr.
  c.optim.lr_scales = ()
  # frozen: patterns of parameters that are never updated and get no optimizer state.
  c.optim.frozen = ()

  c.mesh = ml_collections.ConfigDict()
  # Device mesh. One -1 takes the remaining devices. data: pure data parallel; fsdp: params and
  # optimizer state sharded too; tensor: heads and MLP units split. The rules stay the same.
  c.mesh.axes = ("data", "fsdp", "tensor")
  c.mesh.shape = (-1, 1, 1)
  # A preset that sets mesh.shape from the devices at hand (see PARALLELISM); "" uses
  # mesh.shape. "data": all devices on data; "fsdp": all on fsdp; "fsdp_per_host": fsdp within
  # a host, data across hosts; "tensor": tensor over a host's devices, data across hosts.
  c.mesh.parallelism = ""
  c.mesh.batch_axes = ("data", "fsdp")  # the batch is split over these
  # Logical parameter axis -> mesh axis (None: replicated).
  c.mesh.rules = (
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("head_dim", None),
      ("classes", None),
      ("norm", None),
      # Convolution kernels [kT, kH, kW, in, out]: FSDP splits the output channels, tensor
      # parallelism the input channels (each device convolves its channels, the partial sums
      # are added). Not the other way round: XLA (jax 0.10.2) then computes wrong gradients
      # for strided convolutions with BatchNorm on a data x fsdp x tensor mesh.
      ("conv_in", "tensor"),
      ("conv_out", "fsdp"),
  )
  return c


# Data settings of the datasets our experiment configs use (DMVR shards in config.data.data_dir).
DATASETS = {
    # Dense sampling: 16 frames 4 apart (VideoMAE and MAR on Kinetics). Test: 5 clips x 3
    # crops of the short side resized to 224 (VideoMAE's short_side_size).
    "kinetics400": dict(num_classes=400, num_frames=16, frame_stride=4, min_resize=256,
                        crop_size=224, flip="random", eval_clips=5, eval_crops=3,
                        eval_resize=224),
    "kinetics600": dict(num_classes=600, num_frames=16, frame_stride=4, min_resize=256,
                        crop_size=224, flip="random", eval_clips=5, eval_crops=3,
                        eval_resize=224),
    # Segment sampling, as VideoMAE and MAR fine-tune on SSv2 (VideoMAE pre-trains with 16
    # frames 2 apart). Flips relabel the left/right pairs (e.g. "Pushing something from left to
    # right"). Test: 2 clips x 3 crops at short side 224.
    "ssv2": dict(num_classes=174, num_frames=16, sampler="segment", frame_stride=1,
                 min_resize=256, crop_size=224, flip="swap_labels", eval_clips=2, eval_crops=3,
                 eval_resize=224),
}
# VideoMAE's fine-tuning augmentation (MAR uses the same code): Inception crop, RandAugment
# rand-m7-n4-mstd0.5-inc1, random erasing 0.25, 2 clips per sampled video, mixup 0.8 / cutmix
# 1.0. Label smoothing 0.1 is config.label_smoothing. batch_size counts the clips.
FINETUNE_AUGMENTATION = dict(train_crop="random_resized", randaugment_layers=4,
                             randaugment_magnitude=7.0, random_erasing=0.25, repeated_aug=2,
                             mixup_alpha=0.8, cutmix_alpha=1.0, mix_switch_prob=0.5)
# Training clips per epoch, for configs that count in epochs (Kinetics-400 as VideoMAE lists
# it; the exact count depends on which videos are still online).
EPOCH_SIZES = {"kinetics400": 240_436, "ssv2": 168_913}
# Every value of config.data.name.
DATASET_NAMES = ("synthetic_motion", *DATASETS, "custom")


def use_dataset(c: ml_collections.ConfigDict, name: str) -> None:
  """Points `c.data` at dataset `name` (a key of DATASETS) with its standard clip settings."""
  c.data.name = name
  c.data.update(DATASETS[name])


# The encoder of `cpu_scale`: a 4-block, width-96 ViT in 2x8x8 tubelets.
CPU_ENCODER = {"width": 96, "depth": 4, "num_heads": 4, "patch_size": (2, 8, 8)}


def cpu_scale(c: ml_collections.ConfigDict) -> None:
  """Scales an experiment of a ViT-based model.name (set first) down to the built-in synthetic
  data and a CPU: `CPU_ENCODER` (the fields of it the family reads) on 8 frames of 32x32 (4x4x4
  tokens, so 2x2 cells tile every slice). The `:cpu` variants of the masked-modeling
  configs all use it, so a synthetic pre-training run initialises both synthetic
  fine-tunings."""
  c.data.name = "synthetic_motion"
  c.data.num_classes = 8
  c.data.num_frames, c.data.frame_stride = 8, 2
  c.data.min_resize, c.data.crop_size, c.data.flip = 36, 32, "none"
  c.data.synthetic.num_train = 8192
  c.model.size = "Ti"
  reads = models.family(c.model).reads
  c.model.update({k: v for k, v in CPU_ENCODER.items() if k in reads})
  c.batch_size = 32
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 1000


def load_module(path: str):
  """The config file at `path` as a module (a config that shares another's recipe calls it)."""
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> str:
  """The path of config `name` (a file, maybe with its `:variant`) in the folder of
  `config_file`: a config passes its own __file__ to share another's recipe, wherever it is
  run from."""
  return os.path.join(os.path.dirname(os.path.abspath(config_file)), name)


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `path/to/file.py[:variant]`, as --config=<spec> would give it (for code and
  notebooks; the command line uses ml_collections' config flags)."""
  path, _, variant = spec.partition(":")
  config = load_module(path).get_config(variant or None)
  config.lock()  # as the command line locks it: unknown fields are errors
  return config


def from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The config a run used, from the config.json it wrote into its workdir (locked)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} the workdir of a training "
                            "run? Otherwise pass the config with --config")
  with open(path) as f:
    saved = json.load(f)
  config = base()

  def update(node, values, prefix):
    for key, value in values.items():
      if key not in node:
        raise errors.ConfigError(f"{path}: field {prefix}{key} is not a config field of this "
                                 "vidtx version; pass the config with --config")
      if isinstance(node[key], ml_collections.ConfigDict):
        update(node[key], value, f"{prefix}{key}.")
      elif isinstance(node[key], tuple):  # JSON turned tuples into lists
        node[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
      else:
        node[key] = value

  update(config, saved, "")
  config.lock()
  return config


def _check_fields(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Every field of `config` is one of `base()`'s: a config built in code (unlocked, so a
  misspelt field becomes a new one) is held to what the command line's locked config is."""
  known, given = errors.config_fields(defaults), errors.config_fields(config)
  unknown = sorted(given.keys() - known.keys())
  if unknown:
    raise errors.unknown_field(unknown[0], given[unknown[0]], known)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
  """Checks what would otherwise fail late or silently, before any work starts: the loop's
  fields, then each section by its owner (the model family, data, checkpoint, optimizer, mesh).
  Raises errors.ConfigError naming the field and the fix."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  defaults = base()
  _check_fields(config, defaults)
  d = config.data
  for field in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    if config[field] < 1:
      errors.fail(field, config[field], "must be at least 1")
  if config.eval_every_steps < 0:
    errors.fail("eval_every_steps", config.eval_every_steps, "must be >= 0 (0: only at the end)")
  if not 0 <= config.label_smoothing < 1:
    errors.fail("label_smoothing", config.label_smoothing, "must be in [0, 1)")
  if config.grad_accum_steps < 1:
    errors.fail("grad_accum_steps", config.grad_accum_steps, "must be at least 1 (1: off)")
  if config.batch_size % config.grad_accum_steps:
    errors.fail("grad_accum_steps", config.grad_accum_steps,
                f"must divide batch_size={config.batch_size}")
  models.check_config(config, defaults)
  if d.name not in DATASET_NAMES and not d.name.startswith("tfds:"):
    errors.fail("data.name", d.name, f"choose one of {DATASET_NAMES} ('custom': your own videos "
                "converted with vidtx.data.convert_videos into data.data_dir) or 'tfds:<name>'")
  # The owners imported here, not on top: config files import this module, and TensorFlow and
  # orbax take seconds to import.
  # pylint: disable=import-outside-toplevel
  from vidtx import checkpoint, optim, sharding
  from vidtx.data import pipeline
  pipeline.check_config(d)
  if d.num_classes < 1:
    errors.fail("data.num_classes", d.num_classes, "must be positive")
  checkpoint.check_config(config)
  optim.check_config(config.optim, config.total_steps, models.family(config.model))
  sharding.check_config(config, num_devices, num_processes)
