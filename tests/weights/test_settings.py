"""An HF config.json read against the model a checkpoint fills (vidtx.weights.settings).

The parity tests (tests/parity/) read each HF model's full config (`config.to_dict()`, every
field of its class) against the converted model; these check the reading itself on models
built here, without torch, and that the tables of HF names and defaults are transformers'.
"""

import inspect

import jax
import numpy as np
import pytest
from flax import nnx

from vidtx import weights
from vidtx.models import vit
from vidtx.weights import clip, image, settings, swin, timesformer, videomae, vivit, vtn

# A tiny VideoMAE classifier: 4 frames of 32x32 in 2x8x8 tubelets, width 32, 2 blocks, 4 heads.
VIDEOMAE = {"model_type": "videomae", "image_size": 32, "patch_size": 8, "num_frames": 4,
            "tubelet_size": 2, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128,
            "id2label": {str(i): f"class {i}" for i in range(5)}}


def videomae_classifier(pool="mean"):
  return nnx.eval_shape(lambda: vit.VideoViT(
      num_classes=5, num_frames=4, image_size=32, patch_size=(2, 8, 8), width=32, depth=2,
      num_heads=4, pool=pool, rngs=nnx.Rngs(0)))


def check(config, model=None, keys=("classifier.weight",)):
  settings.check(config, videomae.HF.hf_settings, model or videomae_classifier(), keys,
                 "HF VideoMAE")


def problems(config, **kw):
  with pytest.raises(ValueError, match="config.json does not fit VideoViT") as refused:
    check(config, **kw)
  return str(refused.value).splitlines()[1:]


def test_a_fitting_config_passes_with_hf_defaults_for_what_it_leaves_out():
  # hidden_act (gelu), layer_norm_eps (1e-12), qkv_bias, use_mean_pooling: HF's defaults.
  check(VIDEOMAE)
  check({**VIDEOMAE, "use_mean_pooling": False}, videomae_classifier("first"))


def test_generic_and_private_fields_are_not_compared():
  check({**VIDEOMAE, "architectures": ["VideoMAEForVideoClassification"], "torch_dtype":
         "float32", "problem_type": "single_label_classification", "_name_or_path": "x",
         "transformers_version": "4.20.0", "hidden_dropout_prob": 0.5})


def test_an_unknown_field_is_refused_by_name():
  assert problems({**VIDEOMAE, "use_layer_scale": True}) == [
      "  use_layer_scale=True: a setting vidtx does not know, which may change the computation; "
      "if it does not, convert the weights file in the directory alone (then only names and "
      "shapes are checked)"]


def test_every_problem_is_listed_at_once():
  listed = problems({**VIDEOMAE, "hidden_act": "gelu_fast", "layer_norm_eps": 1e-3,
                     "num_attention_heads": 2, "use_mean_pooling": False})
  assert listed == [
      "  num_attention_heads=2: the model has 4; set --config.model.num_heads=2",
      "  hidden_act='gelu_fast' (the tanh approximation of GELU): our VideoViT blocks use exact "
      "GELU; this checkpoint cannot be converted exactly",
      "  layer_norm_eps=0.001: our VideoViT LayerNorms use eps 1e-06; this checkpoint cannot be "
      "converted exactly",
      "  use_mean_pooling=False: the model has 'mean'; set --config.model.vit.pool='first'"]


@pytest.mark.parametrize("eps,fits", [(1e-12, True), (1e-5, True), (1e-4, False)])
def test_layer_norm_eps_converts_within_the_tolerance(eps, fits):
  config = {**VIDEOMAE, "layer_norm_eps": eps}
  if fits:
    check(config)
  else:
    assert problems(config) == [
        "  layer_norm_eps=0.0001: our VideoViT LayerNorms use eps 1e-06; this checkpoint "
        "cannot be converted exactly"]


def test_an_unknown_activation_is_refused_by_name():
  assert problems({**VIDEOMAE, "hidden_act": "relu"}) == [
      "  hidden_act='relu': our VideoViT blocks use exact GELU; this checkpoint cannot be "
      "converted exactly"]


def test_pruned_heads_are_refused():
  assert problems({**VIDEOMAE, "pruned_heads": {"0": [1]}}) == [
      "  pruned_heads={'0': [1]}: our VideoViT attention keeps every head of every layer; this "
      "checkpoint cannot be converted exactly"]


def test_labels_are_compared_only_with_a_classifier_in_the_checkpoint():
  config = {**VIDEOMAE, "id2label": {"0": "a", "1": "b"}}
  assert problems(config) == [
      "  id2label (2 labels): the model has 5 classes; set --config.data.num_classes=2"]
  check(config, keys=("videomae.layernorm.weight",))  # a VideoMAEModel: no classifier
  check({k: v for k, v in config.items() if k != "id2label"}, keys=())


def test_another_model_types_config_is_refused():
  with pytest.raises(ValueError, match=r"config.json says model_type='vit', but the "
                                       r"checkpoint's keys are HF VideoMAE's \(model_type in "
                                       r"\['videomae'\]\)"):
    check({**VIDEOMAE, "model_type": "vit"})


def test_a_config_with_a_layout_that_is_not_hf_is_refused():
  state = {"patch_embed.proj.weight": np.zeros((32, 3, 2, 8, 8), np.float32)}
  with pytest.raises(ValueError, match=r"a config.json came with a checkpoint in the official "
                                       r"VideoMAE layout, which is not an HF one"):
    weights.convert(state, videomae_classifier(), videomae.SOURCES, hf_config=VIDEOMAE)


# ---- The tables against transformers ----

CLASSES = [
    (videomae.HF_CONFIG, "VideoMAEConfig"), (vivit.HF_CONFIG, "VivitConfig"),
    (timesformer.HF_CONFIG, "TimesformerConfig"), (clip.VISION_CONFIG, "CLIPVisionConfig"),
    (clip.CLIP_CONFIG, "CLIPConfig"), (swin.HF_CONFIG, "SwinConfig"),
    (image.VIT_CONFIG, "ViTConfig"), (vtn.LONGFORMER_CONFIG, "LongformerConfig"),
]


@pytest.mark.parametrize("ours,name", CLASSES, ids=[name for _, name in CLASSES])
def test_defaults_are_the_hf_config_classes(ours, name):
  """Each field of the class's constructor is in our table with HF's default (the table may add
  what the class derives or its first releases wrote)."""
  transformers = pytest.importorskip("transformers")
  hf_class = getattr(transformers, name)
  signature = inspect.signature(hf_class.__init__).parameters
  defaults = {k: p.default for k, p in signature.items() if k not in ("self", "kwargs")}
  assert {k: ours[k] for k in defaults if k in ours} == defaults
  derived = hf_class().to_dict()
  assert {k: ours[k] for k in ours if k not in defaults} == {
      k: derived.get(k, ours[k]) for k in ours if k not in defaults}


@pytest.mark.parametrize("name", sorted(settings.ACTIVATIONS))
def test_activation_names_compute_what_the_table_says(name):
  torch = pytest.importorskip("torch")
  activations = pytest.importorskip("transformers.activations")
  x = np.linspace(-6, 6, 2001, dtype=np.float32)
  theirs = activations.ACT2FN[name](torch.from_numpy(x)).numpy()
  ours = {settings.EXACT_GELU: jax.nn.gelu(x, approximate=False),
          settings.TANH_GELU: jax.nn.gelu(x, approximate=True),
          settings.QUICK_GELU: x * jax.nn.sigmoid(1.702 * x)}[settings.ACTIVATIONS[name]]
  np.testing.assert_allclose(theirs, ours, atol=1e-5)
