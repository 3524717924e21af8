"""Randomly initialised HF CLIP vision towers, converted into ours, give the same per-frame
features.

HF transformers' `CLIPVisionModel` / `CLIPVisionModelWithProjection` (ports of OpenAI CLIP's
`VisionTransformer`) are the reference: QuickGELU, ln_pre, full q/k/v biases, LayerNorm eps
1e-5. HF encodes images, so the clip's frames are folded into its batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import clip, layers  # noqa: E402
from vidtx.weights import clip as clip_weights  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, FRAMES, SIZE, PATCH = 2, 3, 32, 8
WIDTH, DEPTH, HEADS, PROJ = 64, 2, 4, 24


def vision_config():
  return transformers.CLIPVisionConfig(
      hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
      num_attention_heads=HEADS, image_size=SIZE, patch_size=PATCH, projection_dim=PROJ,
      hidden_act="quick_gelu", layer_norm_eps=1e-5)


def abstract_tower(proj_dim):
  return nnx.eval_shape(lambda: clip.CLIPVision(
      image_size=SIZE, patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS,
      proj_dim=proj_dim, rngs=nnx.Rngs(0)))


def ours(state_dict, proj_dim, hf_config=None):
  """Our tower with the converted weights (built abstractly: converting needs only shapes)."""
  abstract = abstract_tower(proj_dim)
  params = weights.convert(state_dict, abstract, (clip_weights.TOWER,), hf_config=hf_config)
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def clips(seed=0):
  """The same frames for both: HF's [B T, C, H, W] and ours [B, T, H, W, C]."""
  video = np.random.default_rng(seed).standard_normal((BATCH, FRAMES, SIZE, SIZE, 3))
  video = video.astype(np.float32)
  frames = video.reshape(BATCH * FRAMES, SIZE, SIZE, 3).transpose(0, 3, 1, 2)
  return torch.from_numpy(np.ascontiguousarray(frames)), jnp.asarray(video)


def assert_close(actual, expected):
  expected = np.asarray(expected)
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  diff = np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max()
  assert diff < 1e-4, diff


@pytest.fixture(scope="module")
def hf_with_projection():
  return randomise(transformers.CLIPVisionModelWithProjection(vision_config()))


def test_features_match_hf_with_projection(hf_with_projection):
  hf = hf_with_projection
  model = ours(hf.state_dict(), PROJ, hf.config.to_dict())
  assert layers.count_params(nnx.state(model, nnx.Param)) == sum(
      p.numel() for p in hf.parameters())
  torch_frames, video = clips()
  with torch.no_grad():
    out = hf(pixel_values=torch_frames)
    pooled = hf.vision_model(pixel_values=torch_frames).pooler_output
  got = nnx.jit(lambda model, video: model(video))(model, video)
  shape = (BATCH, FRAMES)
  assert_close(got["tokens"], out.last_hidden_state.numpy().reshape(*shape, -1, WIDTH))
  assert_close(got["pooled"], pooled.numpy().reshape(*shape, WIDTH))
  assert_close(got["features"], out.image_embeds.numpy().reshape(*shape, PROJ))


def test_vision_model_without_projection_matches_hf(hf_with_projection):
  hf = transformers.CLIPVisionModel(vision_config())
  state = {k: v for k, v in hf_with_projection.state_dict().items()
           if not k.startswith("visual_projection.")}
  hf.load_state_dict(state)  # strict: CLIPVisionModel has exactly these names
  hf.eval()
  model = ours(hf.state_dict(), proj_dim=0, hf_config=hf.config.to_dict())
  torch_frames, video = clips(1)
  with torch.no_grad():
    out = hf(pixel_values=torch_frames)
  got = nnx.jit(lambda model, video: model(video))(model, video)
  assert_close(got["tokens"], out.last_hidden_state.numpy().reshape(BATCH, FRAMES, -1, WIDTH))
  assert_close(got["features"], out.pooler_output.numpy().reshape(BATCH, FRAMES, WIDTH))
  # A projection the checkpoint lacks is named, not left random.
  with pytest.raises(ValueError, match=r"(?s)not filled.*proj/kernel.*no visual_projection"):
    ours(hf.state_dict(), proj_dim=PROJ)


def test_full_clip_model_fills_the_ila_clip_tower(hf_with_projection):
  """A CLIPModel checkpoint (as released on the hub) converts for ILA: its vision tower fills
  `clip/`, the text tower is not read, the ILA modules are left for init_from to keep fresh."""
  text = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=50,
                                     max_position_embeddings=16, projection_dim=PROJ)
  hf = transformers.CLIPModel(transformers.CLIPConfig(
      text_config=text.to_dict(), vision_config=vision_config().to_dict(), projection_dim=PROJ))
  hf.vision_model.load_state_dict(hf_with_projection.vision_model.state_dict())
  hf.visual_projection.load_state_dict(hf_with_projection.visual_projection.state_dict())
  c = configuration.base()
  c.model.name, c.model.attention, c.model.size = "ila", "space_only", "Ti"
  c.model.width, c.model.depth, c.model.num_heads = WIDTH, DEPTH, HEADS
  c.model.patch_size, c.model.ila.proj_dim = (1, PATCH, PATCH), PROJ
  c.data.num_frames, c.data.crop_size = FRAMES, SIZE
  configuration.validate(c, num_devices=1, num_processes=1)
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  params = weights.convert(hf.state_dict(), abstract, models.family(c.model).converters,
                           hf_config=hf.config.to_dict())  # vision settings in vision_config
  assert list(params) == ["clip"]
  expected = weights.convert(hf_with_projection.state_dict(), abstract_tower(PROJ),
                             (clip_weights.TOWER,))
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  a, b = flat(params["clip"]), flat(expected)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])


def test_settings_name_the_nested_vision_field_and_the_projection(hf_with_projection):
  config = transformers.CLIPConfig(vision_config={**vision_config().to_dict(),
                                                  "hidden_act": "gelu"}, projection_dim=PROJ)
  state = hf_with_projection.state_dict()
  with pytest.raises(ValueError, match=r"vision_config\.hidden_act='gelu' \(exact GELU\): our "
                                       r"CLIPVision blocks use QuickGELU"):
    ours(state, PROJ, config.to_dict())
  with pytest.raises(ValueError, match=rf"projection_dim={PROJ}: the model has 12; set "
                                       rf"--config\.model\.ila\.proj_dim={PROJ}"):
    ours(state, 12, hf_with_projection.config.to_dict())


def test_the_hubs_older_clip_configs_are_read_as_hf_reads_them(hf_with_projection):
  """openai/clip-vit-* on the hub hold what the first releases wrote: every generic field and a
  dropout in vision_config, and vision_config_dict, which HF reads over vision_config."""
  generic = transformers.PretrainedConfig().to_dict()
  vision = {**generic, **vision_config().to_dict(), "dropout": 0.0}
  config = {**transformers.CLIPConfig(projection_dim=PROJ).to_dict(), "vision_config": vision,
            "text_config_dict": None, "vision_config_dict": None}
  ours(hf_with_projection.state_dict(), PROJ, config)
  with pytest.raises(ValueError, match=r"vision_config\.hidden_act='gelu' \(exact GELU\)"):
    ours(hf_with_projection.state_dict(), PROJ,
         {**config, "vision_config_dict": {"hidden_act": "gelu"}})
