"""VideoMAE-family checkpoints into the vit family's `VideoViT` and the mae family's
`MaskedVideoModel`, in four layouts told apart by their keys:
- `HF`: HF transformers `VideoMAEForVideoClassification` / `VideoMAEForPreTraining`
  (`videomae.embeddings...`, `videomae.encoder.layer.{i}...`, `decoder.decoder_layers.{i}...`);
- `MAR`: alibaba-mmai-research/Masked-Action-Recognition (the VideoMAE encoder under
  `backbone.`, the VideoMAE decoder, and the bridging classifier `encoder_to_cls_decoder` +
  `cls_head.*`);
- `PRETRAIN`: official MCG-NJU/VideoMAE `modeling_pretrain.py` (the encoder under `encoder.`,
  `encoder_to_decoder`, `mask_token`, `decoder.blocks.{i}`, `decoder.norm`, `decoder.head`);
- `FINETUNE`: official `modeling_finetune.py` (`patch_embed`, `blocks.{i}`, `fc_norm`, `head`).
The target decides which parts are read: a classifier (no "decoder") takes the encoder, the
fc_norm (mean pooling) or the encoder's final norm (config.model.vit.pool="first":
use_mean_pooling=False) and the head; a masked model the encoder, its final norm, the decoder
and, for MAR's classifier, the bridging head. An HF checkpoint's config.json is read against
the model (`_check_settings`).
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from vidtx.weights import Source, settings, tables

HF_BLOCK = {
    "norm1": "layernorm_before",
    # Separate bias-free query/key/value Linears; q_bias, v_bias beside them (k has none).
    "attn": tables.Attention(("attention.attention.query", "attention.attention.key",
                              "attention.attention.value"), "attention.output.dense",
                             biases={"q_bias": "attention.attention.q_bias",
                                     "v_bias": "attention.attention.v_bias"}),
    "norm2": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}
OFFICIAL_BLOCK = {
    "norm1": "norm1",
    # One bias-free qkv Linear; q_bias, v_bias (k has none).
    "attn": tables.Attention("attn.qkv", "attn.proj",
                             biases={"q_bias": "attn.q_bias", "v_bias": "attn.v_bias"}),
    "norm2": "norm2",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
# MAR's TransformerBridgingClsHead block: one qkv Linear with a full [3D] bias, whose k part
# our blocks without a k bias drop (see tables.Attention).
MAR_BRIDGE_BLOCK = {
    "norm1": "norm",
    "attn": tables.Attention("attn.to_qkv", "attn.proj"),
    "norm2": "norm_ffn",
    "mlp/fc1": "ffn.net.0",
    "mlp/fc2": "ffn.net.3",
}
NO_CLS = tables.Absent(
    "VideoMAE-family models have no CLS token: use config.model.vit.pool='mean' (fc_norm on the "
    "mean token) or 'first' (use_mean_pooling=False: the final norm, then the first token)")
NO_BRIDGE = tables.Absent(
    "this checkpoint has no MAR bridging classifier: convert with "
    "config.model.mae.classifier='none' and start MAR from the result with config.init_from "
    "(the classifier then starts fresh)")
# The parts that make a checkpoint a pre-training one.
PRETRAINING_KEYS = ("decoder.", "encoder_to_decoder", "mask_token")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each part of a VideoMAE-family model lives in one naming scheme."""
  encoder: Mapping  # table of the patch embedding, the position table, the blocks
  # The final encoder LayerNorm of pre-training models and of classifiers without mean pooling.
  encoder_norm: str
  fc_norm: str  # the LayerNorm on the mean-pooled tokens of classifiers
  head: str
  decoder: Mapping  # table of encoder_to_decoder, mask_token, decoder/...
  classifier: Mapping | tables.Absent = NO_BRIDGE  # MAR's bridging classifier
  pos_embed: str | None = None  # the key of a saved position table, learned or fixed

  def table(self, masked: bool, mean_pooled: bool) -> dict:
    """The table of a masked model (pre-training, MAR) or of a classifier, whose norm is the
    fc_norm when it pools the mean token."""
    if masked:
      return {"encoder": self.encoder, "norm": self.encoder_norm, **self.decoder,
              "classifier": self.classifier}
    return {"encoder": self.encoder, "norm": self.fc_norm if mean_pooled else self.encoder_norm,
            "head": self.head}


def _decoder(blocks: str, block: Mapping) -> dict:
  return {"encoder_to_decoder": "encoder_to_decoder", "mask_token": "mask_token",
          "decoder": {"blocks": tables.Blocks(blocks, block), "norm": "decoder.norm",
                      "head": "decoder.head"}}


def _official(encoder_prefix: str, **kw) -> Layout:
  """Official VideoMAE: fine-tuning files have the encoder at the top, pre-training files under
  `encoder.` (MAR: `backbone.`); the decoder is the same in both."""
  e = encoder_prefix
  return Layout(
      encoder={"patch_embed": f"{e}patch_embed.proj", "pos_embed": f"{e}pos_embed",
               "cls_token": NO_CLS, "blocks": tables.Blocks(e + "blocks.{}", OFFICIAL_BLOCK)},
      encoder_norm=f"{e}norm", fc_norm="fc_norm", head="head",
      decoder=_decoder("decoder.blocks.{}", OFFICIAL_BLOCK), pos_embed=f"{e}pos_embed", **kw)


HF_LAYOUT = Layout(
    encoder={"patch_embed": "videomae.embeddings.patch_embeddings.projection",
             # HF VideoMAE only has the fixed sinusoid table, which is not saved.
             "pos_embed": tables.Absent("HF VideoMAE checkpoints have fixed sinusoid position "
                                        "embeddings: use config.model.vit.pos_embed='sincos'"),
             "cls_token": NO_CLS,
             "blocks": tables.Blocks("videomae.encoder.layer.{}", HF_BLOCK)},
    encoder_norm="videomae.layernorm", fc_norm="fc_norm", head="classifier",
    decoder=_decoder("decoder.decoder_layers.{}", HF_BLOCK))
MAR_LAYOUT = _official("backbone.", classifier={
    "proj": "encoder_to_cls_decoder",
    "blocks": tables.Blocks("cls_head.blocks.{}", MAR_BRIDGE_BLOCK),
    "norm": "cls_head.norm",
    "head": "cls_head.head",
})


def _starts_with(*prefixes: str):
  return lambda keys: any(k.startswith(prefixes) for k in keys)


def _check_sincos(reader, key, table, what, fix=""):
  """Consumes a saved fixed sinusoid table, checking it is `table`, the one our model
  computes."""
  value = reader.consume(key)
  if value is None:
    return
  if value.size != table.size or not np.allclose(value.reshape(table.shape), table, atol=1e-5):
    reader.mismatches.append(f"{what}: checkpoint {key} (shape {value.shape}) is not the fixed "
                             f"sinusoid table {list(table.shape)} our model computes{fix}")


def _mar_extras(reader, model):
  """MAR's model also saves its data normalisation, the decoder's sinusoid table and an unused
  mask token of the bridging head: check the first two against our model, drop the last."""
  _check_sincos(reader, "pos_embed", np.asarray(model.decoder_pos_embed.table()),
                "decoder position table")
  for name, ours in (("mean", model.mean), ("std", model.std)):
    value = reader.consume(name)
    if value is not None and not np.allclose(value.reshape(-1), ours, atol=1e-6):
      reader.mismatches.append(
          f"data {name}: the checkpoint was trained with {name}={tuple(value.reshape(-1))}, the "
          f"config has {tuple(ours)}; set config.data.{name} to the checkpoint's")
  # TransformerBridgingClsHead builds a mask token its forward never uses.
  reader.consume("cls_head.mask_token")


def _converter(layout: Layout, extras=None):
  """The conversion of `layout` into a classifier or a masked model; `extras` (reader, model)
  reads what else a masked model's checkpoint saves."""

  def convert(reader, target, model):
    masked = "decoder" in target
    mean_pooled = getattr(model, "pool", "mean") == "mean"
    out = tables.walk(reader, layout.table(masked, mean_pooled), target)
    if layout.pos_embed and "pos_embed" not in target["encoder"]:
      # Ours is the fixed table: a saved one must equal it.
      _check_sincos(reader, layout.pos_embed, np.asarray(model.encoder.pos_embed.table()),
                    "encoder/pos_embed", "; learned position embeddings need "
                    "config.model.vit.pos_embed='learned'")
    if masked and extras:
      extras(reader, model)
    unused = reader.unused()
    if not masked and any(k.startswith(PRETRAINING_KEYS) for k in unused):
      reader.hints.append(
          "this is a pre-training checkpoint: convert it with the pre-training model's config "
          "(e.g. configs/videomae_pretrain_k400.py, the same sizes) and point the fine-tuning "
          "run's config.init_from at the result, which copies the encoder by name")
    elif not masked and f"{layout.encoder_norm}.weight" in unused:
      reader.hints.append("the checkpoint normalises every token and classifies the first "
                          "(use_mean_pooling=False): set config.model.vit.pool='first'")
    elif not masked and f"{layout.fc_norm}.weight" in unused:
      reader.hints.append("the checkpoint classifies the mean token (use_mean_pooling=True): "
                          "set config.model.vit.pool='mean'")
    return out

  return convert


# transformers.VideoMAEConfig's fields and defaults.
HF_CONFIG = {
    "image_size": 224, "patch_size": 16, "num_channels": 3, "num_frames": 16, "tubelet_size": 2,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    "qkv_bias": True, "use_mean_pooling": True, "decoder_num_attention_heads": 6,
    "decoder_hidden_size": 384, "decoder_num_hidden_layers": 4,
    "decoder_intermediate_size": 1536, "norm_pix_loss": True,
}
DECODER_FIELDS = ("decoder_num_attention_heads", "decoder_hidden_size",
                  "decoder_num_hidden_layers", "decoder_intermediate_size")


def _check_settings(s: settings.Settings, model) -> None:
  """An HF VideoMAE config against a vit classifier or a mae model (`Source.hf_settings`)."""
  s.skip(*settings.DROPOUT_AND_INIT)
  encoder = model.encoder
  t, p, pw = encoder.patch_embed.patch
  frames, rows, _ = encoder.grid
  settings.check_rgb(s)
  patch = (s["tubelet_size"], s["patch_size"], s["patch_size"])
  s.agree("tubelet_size", t, "model.patch_size", fix=patch)
  s.agree("patch_size", settings.square((p, pw)), "model.patch_size", fix=patch)
  # The fixed sinusoid table, which no checkpoint saves, is computed for the token grid.
  s.agree("num_frames", frames * t, "data.num_frames")
  s.agree("image_size", rows * p, "data.crop_size")
  settings.check_blocks(s, encoder.blocks)
  has_bias = encoder.blocks[0].attn.q_bias is not None
  if not hasattr(model, "decoder"):  # a vit classifier
    s.agree("qkv_bias", has_bias, "model.qkv_bias")
    pool = "mean" if s["use_mean_pooling"] else "first"
    if model.pool != pool:
      s.differs("use_mean_pooling", repr(model.pool), "model.vit.pool", pool)
    s.skip(*DECODER_FIELDS, "norm_pix_loss")  # pre-training only
    if "classifier.weight" in s.keys:
      s.classes(model.head.kernel.shape[1])
    return
  decoder = model.decoder.blocks
  attn = decoder[0].attn
  s.require("qkv_bias", (True,), f"our {s.model} decoder blocks have q and v biases")
  s.agree("decoder_hidden_size", attn.num_heads * attn.head_dim, "model.mae.decoder_width")
  s.agree("decoder_num_hidden_layers", len(decoder), "model.mae.decoder_depth")
  s.agree("decoder_num_attention_heads", attn.num_heads, "model.mae.decoder_heads")
  s.require("decoder_intermediate_size", (4 * s["decoder_hidden_size"],),
            f"our {s.model} decoder blocks' MLPs are 4 x decoder_hidden_size wide")
  s.require("use_mean_pooling", (False,), "VideoMAEForPreTraining then has no final encoder "
            f"LayerNorm, which our {s.model} applies before the decoder")
  s.require("norm_pix_loss", (True,), f"our {s.model} reconstructs per-tubelet normalised "
            "pixels (VideoMAE's norm_pix_loss=True)")


HF = Source(name="HF VideoMAE", keys="'videomae.embeddings...'",
            detect=_starts_with("videomae."), convert=_converter(HF_LAYOUT),
            hf_settings=settings.HFConfig({"videomae": HF_CONFIG}, _check_settings))
MAR = Source(name="MAR", keys="'backbone.blocks.0...', 'cls_head...'",
             # PySlowFast's VTN also keeps its ViT under backbone., beside temporal_encoder.
             detect=lambda keys: (_starts_with("backbone.")(keys)
                                  and not _starts_with("temporal_encoder.")(keys)),
             convert=_converter(MAR_LAYOUT, extras=_mar_extras))
PRETRAIN = Source(name="official VideoMAE pre-training", keys="'encoder.blocks.0...'",
                  detect=_starts_with("encoder.patch_embed.", "encoder.blocks."),
                  convert=_converter(_official("encoder.")))
FINETUNE = Source(name="official VideoMAE", keys="'patch_embed...', 'blocks.0...'",
                  detect=_starts_with("patch_embed.", "blocks."),
                  convert=_converter(_official("")))
# In the order they are told apart.
SOURCES = (HF, MAR, PRETRAIN, FINETUNE)
