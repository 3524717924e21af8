"""Every config field, documented once, and the checks that run before any work starts.

Experiment files in `configs/` start from `base()` and change what they need. Configs are
locked, so a misspelt field (in a file or as `--config.<field>=<value>`) is an error.
"""

import importlib.util
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # root of all randomness: init, drop path, data order and augmentation

  c.model = ml_collections.ConfigDict()
  # Key of vidtx.models.MODELS: "vit" (classifier on all or masked tokens), "mae" (masked
  # video model: VideoMAE pre-training, or MAR with model.classifier="bridge"), "timesformer"
  # or "vivit" (space-time transformers, see model.attention); "ila" (CLIP + implicit learnable
  # alignment, see model.ila_*); "vtn" (a ViT per frame + a Longformer over frames, model.vtn_*);
  # "tps" (a 2-D Swin over the frames with temporal patch shift, see model.window_size).
  c.model.name = "vit"
  # Ti / S / B / L / H: width, depth and heads of the standard ViT sizes; tps: swin_t / swin_b
  c.model.size = "B"
  c.model.width = 0  # > 0 overrides the size's width
  c.model.depth = 0  # > 0 overrides the size's depth
  c.model.num_heads = 0  # > 0 overrides the size's number of heads
  c.model.mlp_ratio = 4.0
  c.model.patch_size = (2, 16, 16)  # tubelet (t, h, w); must divide num_frames and crop_size
  # Learned q and v biases (VideoMAE); timesformer, vivit and vtn add a k bias, as their
  # references.
  c.model.qkv_bias = True
  c.model.pos_embed = "sincos"  # "sincos" (fixed, VideoMAE) or "learned"; model.name="vit" only
  c.model.pool = "mean"  # "mean" (+ fc_norm) or "cls"; model.name="vit" only
  # CLIP's image-tower conventions (a bias-free patch embedding, ln_pre, QuickGELU, LayerNorm eps
  # 1e-5) for model.name="vit" or "timesformer", to start from a CLIP checkpoint (convert_weights,
  # then init_from). Such a vit wants pos_embed="learned", pool="cls".
  c.model.clip_style = False
  # Space-time attention of the blocks (vidtx.models.layers.ATTENTIONS):
  #   "joint": every token attends to every token (vit, mae; vivit model 1; timesformer
  #     joint_space_time). The only one masking works with.
  #   "divided": timesformer (its default): time (+ temporal_fc), then space.
  #   "space_only": timesformer: each frame apart with its own CLS, averaged at the end. ila:
  #     CLIP's blocks see one frame each (the only value it takes). vtn: its per-frame ViT
  #     (the only value it takes).
  #   "factorised_encoder": vivit model 2: a spatial ViT per time slice, then a temporal
  #     transformer (model.temporal_depth blocks) over their CLS tokens.
  #   "factorised_self": vivit model 3: space, then time, each with its own LN and residual.
  #   "factorised_dot": vivit model 4: half the heads attend over time, half over space.
  #   "patch_shift": tps: TPS's temporal patch shift, alternating with a channel shift (tps
  #     with "space_only": the same Swin without the shifts, each frame apart); vit: TPS in
  #     every block (attention within frames over patch-shifted q, k, v; no masking).
  c.model.attention = "joint"
  c.model.temporal_depth = 4  # vivit model 2: blocks of the temporal transformer (B 4, L 24);
  # vtn: Longformer layers (3)
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
  # model.name="mae" only. The decoder reconstructs the masked tubelets' normalised pixels.
  c.model.classifier = "none"  # "none": pre-training; "bridge": MAR's bridging classifier
  c.model.decoder_width = 0  # > 0 overrides the size's (S 192, B 384, L 512, H 640)
  c.model.decoder_depth = 0  # > 0 overrides the size's (S/B 4, L/H 12)
  c.model.decoder_heads = 0  # > 0 overrides the size's (S 3, B 6, L/H 8)
  c.model.bridge_width = 512  # MAR's bridging classifier: width, blocks, heads
  c.model.bridge_depth = 2
  c.model.bridge_heads = 4
  c.model.recon_weight = 1.0  # lambda: weight of the reconstruction MSE (MAR: 0.01 K400, 0.1 SSv2)
  # model.name="ila" (vidtx.models.ila): a CLIP ViT per frame (model.patch_size (1, p, p),
  # attention "space_only") with an ILA module before each block. CLIP's blocks always have
  # q, k and v biases (model.qkv_bias is not read).
  c.model.clip_proj_dim = 0  # CLIP's visual projection of the CLS feature: B 512, L 768; 0: none
  # Interaction convs: "separable" (the K400 code: depthwise 3x3, 1x1 to 256, 3x3) or "dense"
  # (the SSv2 branch: two 3x3 convs); each + BatchNorm + ReLU.
  c.model.ila_interaction = "separable"
  c.model.ila_channels = 256  # of the interaction features (the paper's 256; small for CPU tests)
  # delta: spread of the 9 jittered interactive points at train time. The reference halves it
  # every epoch from epoch 30; here it is fixed (lower it for a late phase).
  c.model.ila_jitter = 0.2
  c.model.ila_loss_weight = 1.0  # weight of the summed per-block cosine alignment losses
  # Temporal pooling of the per-frame features before the LN-dropout-Linear head: "mean" or
  # "mit" (X-CLIP's 1-block multi-frame integration transformer, then the mean).
  c.model.ila_head = "mean"
  # model.name="vtn" (vidtx.models.vtn): a 2-D ViT (model.patch_size (1, p, p)) per frame, then
  # a Longformer (model.temporal_depth layers, the ViT's width and heads) over the frame
  # features, whose positions are the frames' indices: start + data.frame_stride x i.
  c.model.vtn_window = 9  # frames each frame attends to on each side (HF attention_window=18)
  c.model.vtn_dropout = 0.1  # Longformer's hidden and attention-probability dropout
  # model.name="tps" (vidtx.models.tps): a Swin over frames, model.patch_size (2, p, p) (TPS:
  # (2, 4, 4)); model.width is the first stage's C and model.num_heads its heads (both double
  # at every stage); model.depth is not read.
  c.model.window_size = 7  # side of the per-frame attention windows
  c.model.stage_depths = ()  # blocks per stage; (): the size's (swin_t 2-2-6-2, swin_b 2-2-18-2)

  c.data = ml_collections.ConfigDict()
  # "synthetic_motion" is generated; the others are DMVR TFRecord shards in data_dir, written by
  # vidtx.data.convert: "kinetics400", "kinetics600", "ssv2" (their standard settings are in
  # DATASETS) or "custom" (your own videos). num_classes must match the labels.json and
  # metadata.json there. "tfds:<name>" reads a prepared TFDS video dataset (data_dir: its TFDS
  # data_dir, "" for the default) through the same samplers and transforms; num_classes must
  # match its label feature.
  c.data.name = "synthetic_motion"
  # "tfds:" datasets: the names of their tfds.features.Video and ClassLabel features.
  c.data.tfds_features = ("video", "label")
  c.data.data_dir = ""  # DMVR TFRecord shards; "" for synthetic_motion: <workdir>/data/synthetic_motion
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
  # the central frame). Position embeddings are resized and tiled over time (checkpoint.py).
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


def cpu_scale(c: ml_collections.ConfigDict) -> None:
  """Scales an experiment down to the built-in synthetic data and a CPU: a 4-block, width-96
  ViT on 8 frames of 32x32 in 2x8x8 tubelets (4x4x4 tokens, so 2x2 cells tile every slice).
  The `:synthetic` variants of the masked-modeling configs all use it, so a synthetic
  pre-training run initialises both synthetic fine-tunings."""
  c.data.name = "synthetic_motion"
  c.data.num_classes = 8
  c.data.num_frames, c.data.frame_stride = 8, 2
  c.data.min_resize, c.data.crop_size, c.data.flip = 36, 32, "none"
  c.data.synthetic.num_train = 8192
  c.model.size, c.model.width, c.model.depth, c.model.num_heads = "Ti", 96, 4, 4
  c.model.patch_size = (2, 8, 8)
  c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 64, 2, 4
  c.model.bridge_width, c.model.bridge_depth, c.model.bridge_heads = 64, 1, 4
  c.batch_size = 32
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 1000


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `path/to/file.py[:variant]`, as --config=<spec> would give it (for code and
  notebooks; the command line uses ml_collections' config flags)."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
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
        raise ConfigError(f"{path}: field {prefix}{key} is not a config field of this vidtx "
                          "version; pass the config with --config")
      if isinstance(node[key], ml_collections.ConfigDict):
        update(node[key], value, f"{prefix}{key}.")
      elif isinstance(node[key], tuple):  # JSON turned tuples into lists
        node[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
      else:
        node[key] = value

  update(config, saved, "")
  config.lock()
  return config


class ConfigError(ValueError):
  """A config field that cannot work; the message names the field and the fix."""


def _fail(field, value, fix):
  raise ConfigError(f"config.{field}={value!r}: {fix}")


def _validate_ila(config: ml_collections.ConfigDict) -> None:
  m, d = config.model, config.data
  from vidtx.models import ila
  if len(m.patch_size) != 3 or m.patch_size[0] != 1 or m.patch_size[1] != m.patch_size[2]:
    _fail("model.patch_size", m.patch_size, "CLIP embeds each frame's square 2-D patches: use "
          "(1, p, p), e.g. (1, 16, 16) for B/16")
  if d.crop_size // m.patch_size[1] < 4:
    _fail("data.crop_size", d.crop_size, "ILA's point head max-pools the patch grid twice: "
          f"give at least 4 x {m.patch_size[1]} pixels")
  if d.num_frames < 2:
    _fail("data.num_frames", d.num_frames, "ILA aligns adjacent frames: use at least 2")
  if m.ila_interaction not in ila.INTERACTIONS:
    _fail("model.ila_interaction", m.ila_interaction, f"choose one of {ila.INTERACTIONS}")
  if m.ila_channels < 8 or m.ila_channels % 8:
    _fail("model.ila_channels", m.ila_channels, "use a positive multiple of 8 (the paper: 256)")
  if m.ila_head not in ila.HEADS:
    _fail("model.ila_head", m.ila_head, f"choose one of {ila.HEADS}")
  for field in ("clip_proj_dim", "ila_jitter", "ila_loss_weight"):
    if m[field] < 0:
      _fail(f"model.{field}", m[field], "must be >= 0")
  if config.optim.layer_decay < 1:
    # Layer decay numbers the blocks under `encoder/`; ILA's are under `clip/`.
    _fail("optim.layer_decay", config.optim.layer_decay, "layer-wise lr decay is not supported "
          "for model.name='ila': keep 1.0 (optim.lr_scales sets per-group lrs)")


def _validate_vtn(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if len(m.patch_size) != 3 or m.patch_size[0] != 1 or m.patch_size[1] != m.patch_size[2]:
    _fail("model.patch_size", m.patch_size, "VTN embeds each frame's square 2-D patches: use "
          "(1, p, p), e.g. (1, 16, 16) for ViT-B/16")
  if m.temporal_depth < 1:
    _fail("model.temporal_depth", m.temporal_depth, "VTN's Longformer needs at least 1 layer "
          "(the reference: 3)")
  if m.vtn_window < 1:
    _fail("model.vtn_window", m.vtn_window, "a frame must attend to at least 1 frame on each "
          "side (the reference: 9, HF attention_window=18)")
  if not 0 <= m.vtn_dropout < 1:
    _fail("model.vtn_dropout", m.vtn_dropout, "must be in [0, 1)")


def _validate_tps(config: ml_collections.ConfigDict) -> None:
  m, d = config.model, config.data
  from vidtx.models import tps
  if (not isinstance(m.stage_depths, (tuple, list))
      or any(not isinstance(n, int) or n < 1 for n in m.stage_depths)):
    _fail("model.stage_depths", m.stage_depths, "give blocks per stage, e.g. (2, 2, 6, 2), or "
          "() for the size's")
  width, depths, heads = tps.size(m)
  if len(m.patch_size) != 3 or m.patch_size[1] != m.patch_size[2]:
    _fail("model.patch_size", m.patch_size, "TPS embeds square patches of a few frames: use "
          "(t, p, p), e.g. (2, 4, 4)")
  if m.window_size < 1:
    _fail("model.window_size", m.window_size, "must be at least 1 (Swin: 7)")
  resolution = d.crop_size // m.patch_size[1]
  for i in range(len(depths)):
    window, _ = tps.stage_window(resolution, m.window_size)
    if resolution % window or (i < len(depths) - 1 and resolution % 2):
      _fail("data.crop_size", d.crop_size, f"stage {i}'s {resolution}x{resolution} token grid "
            f"must be a multiple of its {window}x{window} windows, and even before patch "
            "merging: use crop_size = patch x window x 2^(stages - 1), e.g. 224 = 4 x 7 x 8")
    resolution //= 2
  if m.attention == "patch_shift" and width // heads < 8:
    _fail("model.num_heads", heads, f"the channel shift moves 1/8 of each head's channels: "
          f"model.width / model.num_heads = {width // heads} must be at least 8")
  if config.optim.layer_decay < 1:
    _fail("optim.layer_decay", config.optim.layer_decay, "layer-wise lr decay is not "
          "supported for model.name='tps': keep 1.0 (optim.lr_scales sets per-group lrs)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
  """Checks what would otherwise fail late or silently. Raises ConfigError naming the field."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  m, d, o = config.model, config.data, config.optim

  from vidtx import models  # the registry imports every model family
  if m.name not in models.MODELS:
    _fail("model.name", m.name, f"choose one of {sorted(models.MODELS)}")
  from vidtx.models import tps, vit
  family = tps if m.name == "tps" else vit  # Swin sizes for tps, ViT sizes for the rest
  if m.size not in family.SIZES:
    _fail("model.size", m.size, f"choose one of {list(family.SIZES)} for model.name={m.name!r}")
  if m.name == "tps":
    _validate_tps(config)
  width, _, heads = family.size(m)
  if width % heads:
    _fail("model.width", width, f"must be divisible by model.num_heads={heads}")
  if m.name == "mae":
    from vidtx.models import mae
    if m.classifier not in mae.CLASSIFIERS:
      _fail("model.classifier", m.classifier, f"choose one of {mae.CLASSIFIERS}")
    if m.masking == "none" or m.mask_ratio == 0:
      _fail("model.masking", m.masking, "a masked video model needs masked tokens: set "
            "model.masking (tube, cell_running, random) and model.mask_ratio > 0")
    if m.pos_embed != "sincos" or m.pool != "mean":
      _fail("model.pos_embed" if m.pos_embed != "sincos" else "model.pool",
            m.pos_embed if m.pos_embed != "sincos" else m.pool,
            "the masked video model uses fixed sinusoids and no CLS token (VideoMAE): keep "
            "pos_embed='sincos' and pool='mean'")
    decoder_width, decoder_heads, _ = mae.decoder_size(m)
    if decoder_width % decoder_heads:
      _fail("model.decoder_width", decoder_width,
            f"must be divisible by model.decoder_heads={decoder_heads}")
    if m.bridge_width % m.bridge_heads:
      _fail("model.bridge_width", m.bridge_width,
            f"must be divisible by model.bridge_heads={m.bridge_heads}")
  if m.attention not in models.ATTENTIONS[m.name]:
    _fail("model.attention", m.attention,
          f"model.name={m.name!r} takes one of {models.ATTENTIONS[m.name]}")
  if m.name not in models.MASKABLE and m.masking != "none":
    _fail("model.masking", m.masking, f"model.name={m.name!r} sees every token: set "
          f"model.masking='none' (masking works with {models.MASKABLE})")
  if m.masking != "none" and m.attention != "joint":
    _fail("model.masking", m.masking, f"attention={m.attention!r} needs every token of the "
          "grid: set model.masking='none' (masking works with attention='joint' only)")
  if m.attention == "factorised_dot" and heads % 2:
    _fail("model.num_heads", heads, "attention='factorised_dot' gives half the heads to time "
          "and half to space: use an even number")
  if m.attention == "factorised_encoder" and m.temporal_depth < 1:
    _fail("model.temporal_depth", m.temporal_depth, "the factorised encoder's temporal "
          "transformer needs at least 1 block (ViViT-B: 4)")
  if m.name == "timesformer" and (len(m.patch_size) != 3 or m.patch_size[0] != 1
                                  or m.patch_size[1] != m.patch_size[2]):
    _fail("model.patch_size", m.patch_size, "TimeSformer embeds each frame's square 2-D "
          "patches: use (1, p, p), e.g. (1, 16, 16)")
  if m.clip_style and m.name not in ("vit", "timesformer"):
    _fail("model.clip_style", m.clip_style, f"CLIP's conventions are built for model.name 'vit' "
          f"and 'timesformer', not {m.name!r} (ila has its own CLIP tower): set it to False")
  if m.name == "timesformer" and config.optim.layer_decay < 1:
    # Layer decay numbers the blocks under `encoder/`; TimeSformer keeps the reference's flat
    # names, so every parameter would get the head's lr.
    _fail("optim.layer_decay", config.optim.layer_decay, "layer-wise lr decay is not "
          "supported for model.name='timesformer': keep 1.0")
  if m.name == "ila":
    _validate_ila(config)
  if m.name == "vtn":
    _validate_vtn(config)
  from vidtx.models import layers
  if m.remat not in layers.REMAT:
    _fail("model.remat", m.remat, f"choose one of {layers.REMAT}")
  try:
    jnp.dtype(m.dtype)
  except TypeError:
    _fail("model.dtype", m.dtype, "use 'float32' or 'bfloat16'")
  if len(m.patch_size) != 3:
    _fail("model.patch_size", m.patch_size, "give (t, h, w)")
  pt, ph, pw = m.patch_size
  if d.num_frames % pt:
    _fail("data.num_frames", d.num_frames,
          f"must be divisible by the tubelet's time size model.patch_size[0]={pt}")
  if d.crop_size % ph or d.crop_size % pw:
    _fail("data.crop_size", d.crop_size,
          f"must be divisible by the tubelet's spatial size {ph}x{pw} (model.patch_size)")
  if d.name not in DATASET_NAMES and not d.name.startswith("tfds:"):
    _fail("data.name", d.name, f"choose one of {DATASET_NAMES} ('custom': your own videos "
          "converted with vidtx.data.convert into data.data_dir) or 'tfds:<name>'")
  from vidtx.data import dmvr
  dmvr.check_config(d)
  from vidtx.models import masking
  if m.masking not in masking.SCHEDULES:
    _fail("model.masking", m.masking, f"choose one of {sorted(masking.SCHEDULES)}")
  if not 0 <= m.mask_ratio < 1:
    _fail("model.mask_ratio", m.mask_ratio, "must be in [0, 1)")
  if m.masking == "cell_running":
    try:
      masking.cell_running(None, masking.token_grid(m, d), m.mask_ratio)
    except ValueError as e:
      _fail("model.mask_ratio", m.mask_ratio, str(e))
  if d.num_classes < 1:
    _fail("data.num_classes", d.num_classes, "must be positive")

  for field in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    if config[field] < 1:
      _fail(field, config[field], "must be at least 1")
  from vidtx import checkpoint
  if config.init_from_inflation not in checkpoint.INFLATIONS:
    _fail("init_from_inflation", config.init_from_inflation,
          f"choose one of {checkpoint.INFLATIONS}")
  if config.eval_every_steps < 0:
    _fail("eval_every_steps", config.eval_every_steps, "must be >= 0 (0: only at the end)")
  if not 0 <= config.label_smoothing < 1:
    _fail("label_smoothing", config.label_smoothing, "must be in [0, 1)")
  if o.warmup_steps >= config.total_steps:  # the cosine needs at least one step
    _fail("optim.warmup_steps", o.warmup_steps,
          f"must be below total_steps={config.total_steps}")
  if o.lr <= 0:
    _fail("optim.lr", o.lr, "must be positive")
  from vidtx import optim
  if o.name not in optim.OPTIMIZERS:
    _fail("optim.name", o.name, f"choose one of {optim.OPTIMIZERS}")
  for entry in o.lr_drops:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2 or not 0 < entry[0] < 1
        or not entry[1] > 0):
      _fail("optim.lr_drops", o.lr_drops, "give (fraction of total_steps in (0, 1), lr factor "
            "> 0) pairs, e.g. ((0.52, 0.1), (0.96, 0.01))")
  if not 0 < o.layer_decay <= 1:
    _fail("optim.layer_decay", o.layer_decay, "must be in (0, 1]; 1.0 turns it off")
  for entry in o.lr_scales:
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[1], (int, float)) or entry[1] < 0):
      _fail("optim.lr_scales", o.lr_scales, "give (pattern, scale) pairs with scale >= 0, "
            "e.g. (('^backbone/', 0.1),)")
  for field, patterns in (("optim.lr_scales", [e[0] for e in o.lr_scales]),
                          ("optim.frozen", o.frozen)):
    for pattern in patterns:
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        _fail(field, pattern, f"not a regular expression ({e})")

  mesh = config.mesh
  if len(mesh.axes) != len(mesh.shape):
    _fail("mesh.shape", mesh.shape, f"needs one size per axis in mesh.axes={mesh.axes}")
  for axis in mesh.batch_axes:
    if axis not in mesh.axes:
      _fail("mesh.batch_axes", mesh.batch_axes, f"{axis!r} is not in mesh.axes={mesh.axes}")
  for logical, axis in mesh.rules:
    if axis is not None and axis not in mesh.axes:
      _fail("mesh.rules", (logical, axis), f"{axis!r} is not in mesh.axes={mesh.axes}")
  if config.grad_accum_steps < 1:
    _fail("grad_accum_steps", config.grad_accum_steps, "must be at least 1 (1: off)")
  if config.batch_size % config.grad_accum_steps:
    _fail("grad_accum_steps", config.grad_accum_steps,
          f"must divide batch_size={config.batch_size}")
  shape = mesh_shape(mesh, num_devices, num_processes)
  batch_devices = 1
  for name, size in zip(mesh.axes, shape):
    if name in mesh.batch_axes:
      batch_devices *= size
  micro_batch = config.batch_size // config.grad_accum_steps
  if micro_batch % batch_devices:
    field, value = (("batch_size", config.batch_size) if config.grad_accum_steps == 1 else
                    ("grad_accum_steps", config.grad_accum_steps))
    _fail(field, value,
          f"each micro-batch of batch_size / grad_accum_steps = {micro_batch} clips must split "
          f"over the {batch_devices} devices of the batch axes {tuple(mesh.batch_axes)}; e.g. "
          f"--config.batch_size="
          f"{max(1, micro_batch // batch_devices) * batch_devices * config.grad_accum_steps}")
  if config.batch_size % num_processes:
    _fail("batch_size", config.batch_size,
          f"must be divisible by the number of hosts ({num_processes})")
  eval_batch = config.eval_batch_size or config.batch_size
  if config.eval_batch_size < 0 or eval_batch % batch_devices or eval_batch % num_processes:
    _fail("eval_batch_size", config.eval_batch_size,
          f"must be 0 (batch_size) or a positive multiple of the {batch_devices} devices of the "
          f"batch axes and of the {num_processes} hosts")


# mesh.parallelism presets: (hosts, devices per host) -> mesh.shape over (data, fsdp, tensor).
PARALLELISM = {
    "data": lambda hosts, per_host: (-1, 1, 1),
    "fsdp": lambda hosts, per_host: (1, -1, 1),
    "fsdp_per_host": lambda hosts, per_host: (hosts, per_host, 1),
    "tensor": lambda hosts, per_host: (hosts, 1, per_host),
}


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int,
               num_processes: int = 1) -> tuple[int, ...]:
  """The mesh shape: mesh.parallelism's preset or mesh.shape, with a single -1 resolved.

  Checks that the sizes multiply to the device count.
  """
  if mesh_config.parallelism:
    if mesh_config.parallelism not in PARALLELISM:
      _fail("mesh.parallelism", mesh_config.parallelism,
            f"choose one of {sorted(PARALLELISM)}, or '' to use mesh.shape")
    if tuple(mesh_config.axes) != ("data", "fsdp", "tensor"):
      _fail("mesh.parallelism", mesh_config.parallelism,
            f"presets are for mesh.axes=('data', 'fsdp', 'tensor'), not {tuple(mesh_config.axes)}"
            "; set mesh.shape instead")
    shape = PARALLELISM[mesh_config.parallelism](num_processes, num_devices // num_processes)
  else:
    shape = mesh_config.shape
  shape = list(shape)
  if shape.count(-1) > 1:
    _fail("mesh.shape", tuple(shape), "at most one axis may be -1")
  known = 1
  for s in shape:
    if s != -1:
      if s < 1:
        _fail("mesh.shape", tuple(shape), "sizes must be positive or -1")
      known *= s
  if -1 in shape:
    if num_devices % known:
      _fail("mesh.shape", tuple(shape), f"the fixed sizes do not divide the {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    _fail("mesh.shape", tuple(shape), f"the sizes must multiply to the {num_devices} devices")
  return tuple(shape)
