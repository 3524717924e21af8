"""HF image Swin checkpoints (`SwinForImageClassification`: `swin.`, `classifier`; or
`SwinModel`, the same names without `swin.`) into the tps family's `TPS`, inflated to video
as TPS starts from ImageNet: the Conv2d patch kernel over the tubelet's frames, and each 2-D
relative position bias table tiled over the Δt rows (the reference's inflate_weights;
`vidtx.weights.inflate`). A `SwinModel` has no classifier and gives no head (a training run's
init_from keeps a fresh one); a classifier must fit the model's head.
"""

import dataclasses

from vidtx.weights import Source, inflate, tables

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
                convert=convert)


SWIN = source()
