"""An HF checkpoint's architecture settings (the config.json of a `save_pretrained` directory)
read against the model it fills.

Names and shapes do not show every setting of an HF model: an activation, a LayerNorm eps, a
pooling or an attention type changes what it computes without a parameter to tell. So each HF
source (`vidtx.weights.Source.hf_settings`) reads every field of its HF config class against the
model (`vidtx.weights.convert` with `hf_config`):
- a setting our model takes from its config (sizes, clip shape, pooling, attention, biases) must
  agree; the message names the config field to set, with the checkpoint's value;
- a setting our model has no option for (an activation, a LayerNorm eps, absolute position
  embeddings in a Swin) must be what our model computes, or it is refused by name: the
  checkpoint cannot be converted exactly;
- fields that only shape training (dropout, drop path, initialisation) or parts the model does
  not build (a pooler, a text tower) are skipped, and so are PretrainedConfig's own fields
  (`GENERIC`: generation, outputs, label names);
- any other field is refused by name: vidtx does not know whether it changes the computation.
A field config.json leaves out has its HF class's default, as HF reads it.

LayerNorm eps converts within EPS_TOLERANCE of ours: the difference moves a normalised value by
|Δeps| / (2 var) of itself, 5e-6 for features of unit variance. The hub's HF ViT and VideoMAE
checkpoints keep HF's default eps 1e-12 where the original models (and ours) use 1e-6; they
convert within the parity tests' 1e-4.
"""

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flax import nnx

EPS_TOLERANCE = 1e-5

EXACT_GELU = "exact GELU"
TANH_GELU = "the tanh approximation of GELU"
QUICK_GELU = "QuickGELU (x sigmoid(1.702 x))"
# HF activation names (transformers.activations) -> the function they compute.
ACTIVATIONS = {
    "gelu": EXACT_GELU, "gelu_python": EXACT_GELU,
    "gelu_new": TANH_GELU, "gelu_fast": TANH_GELU, "gelu_pytorch_tanh": TANH_GELU,
    "gelu_python_tanh": TANH_GELU, "gelu_accurate": TANH_GELU,
    "quick_gelu": QUICK_GELU,
}
# Training-only fields of most HF vision configs.
DROPOUT_AND_INIT = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")
# PretrainedConfig's own fields, with some that older transformers versions wrote: generation,
# outputs, tokenisers, label names, dtype, serialisation. None changes what an encoder computes
# (pruned_heads does, and is checked apart).
GENERIC = frozenset({
    "add_cross_attention", "architectures", "bad_words_ids", "begin_suppress_tokens",
    "bos_token_id", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "dtype", "early_stopping",
    "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "gradient_checkpointing",
    "id2label", "is_decoder", "is_encoder_decoder", "label2id", "length_penalty", "max_length",
    "min_length", "model_type", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_past",
    "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict", "return_dict_in_generate",
    "sep_token_id", "suppress_tokens", "task_specific_params", "temperature", "tf_legacy_loss",
    "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k", "top_p",
    "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16",
    "use_cache", "xla_device",
})
# PretrainedConfig's defaults of the generic fields the checks read: two labels (num_labels=2).
GENERIC_DEFAULTS = {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}


def flag(field: str, value) -> str:
  """The flag that sets config field `field` to `value`, quoted for a shell."""
  if isinstance(value, (tuple, list)):
    return f"--config.{field}='{tuple(value)}'"
  return f"--config.{field}={value!r}"


def _plain(value):
  """JSON lists as tuples, so they compare with our tuples."""
  return tuple(_plain(v) for v in value) if isinstance(value, list) else value


class Settings:
  """The fields of one HF config (a dict from config.json) read against our model.

  `defaults` are the HF config class's fields with their defaults; `model` names our model in
  messages; `keys` are the checkpoint's. Every disagreement is collected in `problems`; every
  field must be read (`[]`) or skipped, so that `unknown` finds the rest.
  """

  def __init__(self, config: Mapping, defaults: Mapping, model: str, keys: Collection[str] = (),
               prefix: str = "", problems: list | None = None):
    self.config, self.defaults, self.model, self.keys = config, defaults, model, keys
    self.prefix = prefix  # of a nested config's fields in messages, e.g. "vision_config."
    self.problems = [] if problems is None else problems
    self.known = set()
    self.sections = []

  def __getitem__(self, name: str):
    self.known.add(name)
    if name in self.config:
      return _plain(self.config[name])
    return _plain(self.defaults[name] if name in self.defaults else GENERIC_DEFAULTS[name])

  def skip(self, *names: str) -> None:
    """Fields that do not change what the model computes (training, parts not built)."""
    missing = set(names) - set(self.defaults) - GENERIC
    if missing:  # a converter bug
      raise AssertionError(f"skipped fields the HF config class lacks: {sorted(missing)}")
    self.known.update(names)

  def section(self, name: str, defaults: Mapping, over: Mapping | None = None) -> "Settings":
    """A nested config (CLIPConfig's vision_config), its problems collected with ours; `over`
    holds values read over it (an older release's vision_config_dict)."""
    nested = Settings({**(self[name] or {}), **(over or {})}, defaults, self.model, self.keys,
                      f"{self.prefix}{name}.", self.problems)
    self.sections.append(nested)
    return nested

  def _shown(self, name: str) -> str:
    return f"{self.prefix}{name}={self[name]!r}"

  def differs(self, name: str, ours: str, field: str, fix) -> None:
    """Records that setting `name` is not the model's `ours`: set config `field` to `fix`."""
    self.problems.append(f"{self._shown(name)}: the model has {ours}; set {flag(field, fix)}")

  def agree(self, name: str, ours, field: str, fix=None) -> None:
    """Setting `name` must be `ours` (in HF's terms); config `field` sets it, to `fix` (default:
    the setting)."""
    if self[name] != ours:
      self.differs(name, repr(ours), field, self[name] if fix is None else fix)

  def refuse(self, name: str, reason: str, note: str = "") -> None:
    """Records that setting `name` (`note` says what it means) has no counterpart in the
    model: `reason` says what ours does."""
    self.problems.append(f"{self._shown(name)}{note}: {reason}; this checkpoint cannot be "
                         "converted exactly")

  def require(self, name: str, allowed: Collection, reason: str) -> None:
    """Setting `name` must be one of `allowed`, what the model computes (`reason` says so)."""
    if self[name] not in allowed:
      self.refuse(name, reason)

  def activation(self, name: str, mlp) -> None:
    """The MLP activation `name` must be the one `mlp` (a `layers.Mlp`) computes."""
    ours = QUICK_GELU if mlp.quick_gelu else TANH_GELU if mlp.approximate_gelu else EXACT_GELU
    theirs = ACTIVATIONS.get(self[name])
    if theirs != ours:
      self.refuse(name, f"our {self.model} blocks use {ours}", f" ({theirs})" if theirs else "")

  def eps(self, name: str, ours: float) -> None:
    """LayerNorm eps `name` must be within EPS_TOLERANCE of ours (see the module docstring)."""
    theirs = self[name]
    if not isinstance(theirs, (int, float)) or abs(theirs - ours) > EPS_TOLERANCE:
      self.refuse(name, f"our {self.model} LayerNorms use eps {ours!r}")

  def classes(self, ours: int) -> None:
    """The classifier's labels (id2label, HF's num_labels) must be the model's classes."""
    labels = len(self["id2label"])
    if labels != ours:
      self.problems.append(f"id2label ({labels} labels): the model has {ours} classes; set "
                           f"{flag('data.num_classes', labels)}")

  def unknown(self) -> list[str]:
    """A problem for each field of config.json that was neither read nor skipped, here and in
    the nested configs."""
    problems = [
        f"{self.prefix}{name}={value!r}: a setting vidtx does not know, which may change the "
        "computation; if it does not, convert the weights file in the directory alone (then "
        "only names and shapes are checked)"
        for name, value in self.config.items()
        if name not in self.known and name not in GENERIC and not name.startswith("_")]
    return problems + [p for nested in self.sections for p in nested.unknown()]


@dataclasses.dataclass(frozen=True)
class HFConfig:
  """How an HF source reads config.json: its HF config classes (model_type -> the class's
  fields with HF's defaults) and `check(settings, model)`, which reads or skips every field."""
  classes: Mapping[str, Mapping[str, Any]]
  check: Callable[[Settings, nnx.Module], None]


def check(config: Mapping, hf_config: HFConfig, model: nnx.Module, keys: Collection[str],
          source_name: str) -> None:
  """Raises ValueError listing every setting of `config` (config.json's dict) that `model`
  does not compute as the checkpoint's HF model does (`keys`: the checkpoint's)."""
  model_type = config.get("model_type")
  if model_type not in hf_config.classes:
    raise ValueError(f"config.json says model_type={model_type!r}, but the checkpoint's keys "
                     f"are {source_name}'s (model_type in {sorted(hf_config.classes)}): is it "
                     "the checkpoint's config.json?")
  name = type(model).__name__
  s = Settings(config, hf_config.classes[model_type], name, keys)
  hf_config.check(s, model)
  if config.get("pruned_heads"):
    s.refuse("pruned_heads", f"our {name} attention keeps every head of every layer")
  problems = s.problems + s.unknown()
  if problems:
    raise ValueError(f"this {source_name} checkpoint's config.json does not fit {name}:\n  "
                     + "\n  ".join(problems))


def check_transformer(s: Settings, *, width: int, depth: int, heads: int, mlp, eps: float,
                      depth_field: str = "model.depth") -> None:
  """The fields HF's BERT/ViT-style configs share (hidden_size, num_hidden_layers,
  num_attention_heads, intermediate_size, hidden_act, layer_norm_eps) against our encoder's
  width, depth, heads, MLP (a `layers.Mlp`) and LayerNorm eps. Width, heads and MLP ratio are
  config.model's shared fields; `depth_field` sets the depth."""
  s.agree("hidden_size", width, "model.width")
  s.agree("num_hidden_layers", depth, depth_field)
  s.agree("num_attention_heads", heads, "model.num_heads")
  s.agree("intermediate_size", mlp.fc1.kernel.shape[1], "model.mlp_ratio",
          fix=s["intermediate_size"] / s["hidden_size"])
  s.activation("hidden_act", mlp)
  s.eps("layer_norm_eps", eps)


def check_blocks(s: Settings, blocks, **kw) -> None:
  """`check_transformer` for a list of `layers.Block`s."""
  attn = blocks[0].attn
  check_transformer(s, width=attn.num_heads * attn.head_dim, depth=len(blocks),
                    heads=attn.num_heads, mlp=blocks[0].mlp, eps=blocks[0].norm1.eps, **kw)


def square(patch: tuple) -> int | tuple:
  """A (h, w) patch as HF's int patch_size where it is square."""
  h, w = patch
  return h if h == w else (h, w)


def check_rgb(s: Settings) -> None:
  s.require("num_channels", (3,), "our models embed RGB frames (3 channels)")
