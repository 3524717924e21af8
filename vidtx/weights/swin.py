"""HF image Swin checkpoints (`SwinForImageClassification`: `swin.`, `classifier`; or
`SwinModel`, the same names without `swin.`) into the tps family's `TPS`, inflated to video
as TPS starts from ImageNet: the Conv2d patch kernel over the tubelet's frames, and each 2-D
relative position bias table tiled over the Δt rows (the reference's inflate_weights;
`vidtx.weights.inflate`). A `SwinModel` has no classifier and gives no head (a training run's
init_from keeps a fresh one); a classifier must fit the model's head. An HF directory's
config.json is read against the model (`_check_settings`).
"""

import dataclasses

from vidtx.weights import Source, inflate, settings, tables

RELATIVE_POSITION_INDEX = "attention.self.relative_position_index"  # rebuilt by the model


@dataclasses.dataclass(frozen=True)
class TiledTable:
  """Our relative position bias table [(2T-1) (2w-1)^2, heads] from a 2-D one
  [(2w-1)^2, heads], the same for every Δt of the `frames` token frames."""
  key: str
  frames: int

  def read(self, reader, prefix, target, path):
    rows, heads = tables.shape(target)
    table = reader.take(prefix + self.key, (rows // (2 * self.frames - 1), heads), path)
    return None if table is None else inflate.relative_bias_table(table, self.frames)


def backbone_table(frames: int, inflation: str) -> dict:
  """Our `tps.SwinTPS` path -> HF name (under `swin.` in a classifier's checkpoint)."""
  block = {
      "norm1": "layernorm_before",
      "attn": tables.Attention(("attention.self.query", "attention.self.key",
                                "attention.self.value"), "attention.output.dense"),
      "attn/relative_position_bias_table": TiledTable(
          "attention.self.relative_position_bias_table", frames),
      "norm2": "layernorm_after",
      "mlp/fc1": "intermediate.dense",
      "mlp/fc2": "output.dense",
  }
  return {
      "patch_embed": tables.Inflated("embeddings.patch_embeddings.projection", inflation),
      "patch_norm": "embeddings.norm",
      "stages": tables.Blocks("encoder.layers.{}", {
          "blocks": tables.Blocks("blocks.{}", block),
          "downsample/norm": "downsample.norm",  # patch merging; not in the last stage
          "downsample/reduction": "downsample.reduction",
      }),
      "norm": "layernorm",
  }


# transformers.SwinConfig's fields and defaults, with those it derives (hidden_size, num_layers,
# stage_names) and "path_norm", which the first releases wrote (the hub's microsoft/swin-* still
# hold it) and no HF code reads: the patch embedding's LayerNorm is always there, as in TPS.
HF_CONFIG = {
    "image_size": 224, "patch_size": 4, "num_channels": 3, "embed_dim": 96,
    "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7, "mlp_ratio": 4.0,
    "qkv_bias": True, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.1, "hidden_act": "gelu", "use_absolute_embeddings": False,
    "initializer_range": 0.02, "layer_norm_eps": 1e-05, "encoder_stride": 32,
    "out_features": None, "out_indices": None, "hidden_size": 768, "num_layers": 4,
    "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"], "path_norm": True,
}


def _check_settings(s: settings.Settings, model) -> None:
  """An HF Swin config against TPS's backbone. Both take their windows from the token grid at
  run time (a grid no larger than the window is one window), so image_size is not compared:
  the windows are, at the model's grid. hidden_size and num_layers follow from embed_dim and
  depths; encoder_stride is SwinForMaskedImageModeling's; the backbone outputs are not used."""
  s.skip(*settings.DROPOUT_AND_INIT, "drop_path_rate", "image_size", "hidden_size",
         "num_layers", "encoder_stride", "out_features", "out_indices", "stage_names",
         "path_norm")
  backbone = model.backbone
  t, p, pw = backbone.patch_embed.patch
  first = [stage.blocks[0] for stage in backbone.stages]
  settings.check_rgb(s)
  s.agree("patch_size", settings.square((p, pw)), "model.patch_size",
          fix=(t, s["patch_size"], s["patch_size"]))
  s.agree("embed_dim", backbone.patch_embed.kernel.shape[-1], "model.width")
  s.agree("depths", tuple(len(stage.blocks) for stage in backbone.stages),
          "model.tps.stage_depths")
  heads, theirs = tuple(block.num_heads for block in first), s["num_heads"]
  doubling = tuple(theirs[0] * 2 ** i for i in range(len(theirs)))
  if theirs != heads and theirs == doubling:
    s.differs("num_heads", repr(heads), "model.num_heads", theirs[0])
  elif theirs != heads:
    s.refuse("num_heads", "our TPS doubles the first stage's heads at every stage")
  windows = tuple(block.window for block in first)
  if windows != tuple(min(block.resolution, s["window_size"]) for block in first):
    s.differs("window_size", f"windows {windows} over its stages", "model.tps.window_size",
              s["window_size"])
  fc1 = first[0].mlp.fc1.kernel.shape
  s.agree("mlp_ratio", fc1[1] / fc1[0], "model.mlp_ratio")
  s.activation("hidden_act", first[0].mlp)
  s.eps("layer_norm_eps", first[0].norm1.eps)
  s.require("qkv_bias", (True,), "our TPS attention has q, k and v biases")
  s.require("use_absolute_embeddings", (False,), "our TPS has no absolute position embeddings "
            "(Swin's relative position bias only)")
  if "classifier.weight" in s.keys:
    s.classes(model.head.kernel.shape[1])


def source(inflation: str = "average") -> Source:
  """The HF Swin source whose patch kernel is inflated over the tubelet's t frames by
  `inflation`: "average" (repeated / t, TPS's) or "central" (frame t // 2 only)."""
  if inflation not in inflate.INFLATIONS:
    raise ValueError(f"inflation={inflation!r}: choose one of {inflate.INFLATIONS}")

  def convert(reader, target, model):
    if "classifier.weight" not in reader.arrays:
      del target["head"]  # a SwinModel: the head stays as the model has it
    prefix = "swin." if any(k.startswith("swin.") for k in reader.arrays) else ""
    frames = model.backbone.grid[0]  # token frames
    out = tables.walk(reader, {
        "backbone": tables.Within(prefix, backbone_table(frames, inflation)),
        "head": "classifier",
    }, target)
    for key in reader.arrays:
      if key.endswith(RELATIVE_POSITION_INDEX):
        reader.consume(key)
    return out

  return Source(name="HF Swin", keys="'swin.encoder.layers.0...relative_position_bias_table'",
                detect=lambda keys: any(k.endswith("relative_position_bias_table")
                                        for k in keys),
                convert=convert, hf_settings=settings.HFConfig({"swin": HF_CONFIG},
                                                               _check_settings))


SWIN = source()
