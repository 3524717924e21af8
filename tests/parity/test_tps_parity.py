"""TPS without its temporal shifts is a 2-D Swin per frame: converted from a randomly
initialised HF `SwinForImageClassification`, it computes HF's features and logits.

There is no HF TPS; the shifts themselves are checked in tests/models/test_tps.py. With
`inflation="central"` the (2, 4, 4) patch kernel sees only the second frame of each pair, so
our model on a clip equals HF on its odd frames; with TPS's "average" inflation, a clip of
repeated frame pairs gives the same. HF pads grids that the windows do not divide; these sizes
need no padding (8x8 tokens in 4x4 windows, then one 4x4 window, unshifted, as in Swin's last
stage at 224^2). LayerNorm eps is 1e-5 in Swin, HF's default and ours.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vidtx import configuration, models, weights  # noqa: E402
from vidtx.models import layers  # noqa: E402
from vidtx.weights import image, swin  # noqa: E402
from torch_params import randomise  # noqa: E402

BATCH, FRAMES, SIZE = 2, 8, 32  # 4 token frames of 8x8
WIDTH, DEPTHS, HEADS, WINDOW, CLASSES = 32, (2, 2), 2, 4, 5


def hf_model(seed=0, **kw):
  config = transformers.SwinConfig(**{**dict(
      image_size=SIZE, patch_size=4, num_channels=3, embed_dim=WIDTH, depths=list(DEPTHS),
      num_heads=[HEADS * 2 ** i for i in range(len(DEPTHS))], window_size=WINDOW, mlp_ratio=4.0,
      qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-5, drop_path_rate=0.0,
      use_absolute_embeddings=False, num_labels=CLASSES), **kw})
  model = transformers.SwinForImageClassification(config)
  return randomise(model, seed)


def our_config(attention="space_only"):
  c = configuration.base()
  c.model.name, c.model.size, c.model.attention = "tps", "swin_t", attention
  c.model.width, c.model.num_heads, c.model.tps.stage_depths = WIDTH, HEADS, DEPTHS
  c.model.tps.window_size, c.model.patch_size = WINDOW, (2, 4, 4)
  c.data.num_frames, c.data.crop_size, c.data.num_classes = FRAMES, SIZE, CLASSES
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def abstract_model(attention="space_only"):
  config = our_config(attention)
  return nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))


def converted(hf, inflation, attention="space_only"):
  abstract = abstract_model(attention)
  params = weights.convert(hf.state_dict(), abstract, (swin.source(inflation),),
                           hf_config=hf.config.to_dict())
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state), params


@nnx.jit
def features_and_logits(model, video):
  """Per-frame pooled features [B, T', C] and the clip's logits."""
  return model.backbone(video).mean(axis=(2, 3)), model(video)[0]


def hf_per_frame(hf, frames):
  """HF on every frame of [B, T', H, W, 3]: pooled features [B, T', C], logits [B, T', K]."""
  b, t = frames.shape[:2]
  pixels = torch.from_numpy(np.ascontiguousarray(frames.reshape(b * t, SIZE, SIZE, 3)
                                                 .transpose(0, 3, 1, 2)))
  with torch.no_grad():
    pooled = hf.swin(pixel_values=pixels).pooler_output.numpy()
    logits = hf.classifier(torch.from_numpy(pooled)).numpy()
  return pooled.reshape(b, t, -1), logits.reshape(b, t, -1)


def assert_close(ours, expected):
  assert np.abs(expected).max() > 0.1  # not vanishing, so the tolerance means something
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_without_shift_it_is_hf_swin_per_frame():
  hf = hf_model()
  video = np.random.default_rng(0).standard_normal((BATCH, FRAMES, SIZE, SIZE, 3))
  video = video.astype(np.float32)
  model, params = converted(hf, "central")
  kernel = params["backbone"]["patch_embed"]["kernel"]
  assert kernel.shape == (2, 4, 4, 3, WIDTH) and not kernel[0].any()  # [0, k]: odd frames
  pooled, logits = features_and_logits(model, jnp.asarray(video))
  hf_pooled, hf_logits = hf_per_frame(hf, video[:, 1::2])
  assert_close(pooled, hf_pooled)
  assert_close(logits, hf_logits.mean(axis=1))  # the head is linear: mean of frames' logits

  # TPS's own inflation: the kernel averaged over the pair, so repeated frames give HF's.
  model, params = converted(hf, "average")
  kernel = params["backbone"]["patch_embed"]["kernel"]
  np.testing.assert_array_equal(kernel[0], kernel[1])
  pairs = np.repeat(video[:, ::2], 2, axis=1)
  pooled, logits = features_and_logits(model, jnp.asarray(pairs))
  assert_close(pooled, hf_pooled_even := hf_per_frame(hf, video[:, ::2])[0])
  assert hf_pooled_even.shape == (BATCH, FRAMES // 2, 8 * WIDTH // 4)


def test_conversion_tiles_tables_and_fills_everything():
  hf = hf_model()
  config = our_config("patch_shift")
  abstract = nnx.eval_shape(lambda: models.build(config.model, config.data, nnx.Rngs(0)))
  # Every HF parameter is used once, except the tables, which grow by the 2T-1 = 7 Δt rows,
  # and the patch kernel, which doubles over the pair of frames.
  table_params = sum(p.numel() for n, p in hf.named_parameters() if "bias_table" in n)
  kernel_params = hf.swin.embeddings.patch_embeddings.projection.weight.numel()
  assert layers.count_params(nnx.state(abstract, nnx.Param)) == (
      sum(p.numel() for p in hf.parameters()) + 6 * table_params + kernel_params)
  # The family's converter: average.
  params = weights.convert(hf.state_dict(), abstract, models.family(config.model).converters)
  hf_table = hf.state_dict()["swin.encoder.layers.1.blocks.1.attention.self."
                             "relative_position_bias_table"].numpy()
  table = params["backbone"]["stages"][1]["blocks"][1]["attn"]["relative_position_bias_table"]
  assert table.shape == (7 * 7 * 7, 4) and hf_table.shape == (7 * 7, 4)
  np.testing.assert_array_equal(table.reshape(7, 49, 4), np.broadcast_to(hf_table, (7, 49, 4)))
  # A SwinModel (no "swin." prefix, no classifier) gives everything but the head.
  backbone_only = {k[len("swin."):]: v for k, v in hf.state_dict().items()
                   if k.startswith("swin.")}
  assert swin.SWIN.detect(list(backbone_only)) and not image.VIT.detect(list(backbone_only))
  without_head = weights.convert(backbone_only, abstract, (swin.SWIN,))
  assert "head" not in without_head
  np.testing.assert_array_equal(without_head["backbone"]["norm"]["scale"],
                                params["backbone"]["norm"]["scale"])


def test_a_wrong_window_names_the_table():
  hf = hf_model()
  c = our_config()
  c.model.tps.window_size, c.data.crop_size = 2, 32  # 8x8 then 4x4 tokens in 2x2 windows
  abstract = nnx.eval_shape(lambda: models.build(c.model, c.data, nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"(?s)not filled.*relative_position_bias_table.*shape "
                                       r"\(49, 2\).*needs \(9, 2\)"):
    weights.convert(hf.state_dict(), abstract, (swin.SWIN,))


def test_settings_name_the_tps_fields_or_refuse():
  hf = hf_model()
  # The hub's microsoft/swin-* configs hold "path_norm", which no HF code reads.
  weights.convert(hf.state_dict(), abstract_model(), (swin.SWIN,),
                  hf_config={**hf.config.to_dict(), "path_norm": True})
  config = {**hf.config.to_dict(), "window_size": 2, "use_absolute_embeddings": True,
            "num_heads": [HEADS, 3 * HEADS]}
  with pytest.raises(ValueError) as refused:
    weights.convert(hf.state_dict(), abstract_model(), (swin.SWIN,), hf_config=config)
  message = str(refused.value)
  assert (f"window_size=2: the model has windows ({WINDOW}, {WINDOW}) over its stages; set "
          "--config.model.tps.window_size=2") in message
  assert ("use_absolute_embeddings=True: our TPS has no absolute position embeddings") in message
  assert (f"num_heads={(HEADS, 3 * HEADS)}: our TPS doubles the first stage's heads at every "
          "stage") in message
  doubled = {**hf.config.to_dict(), "num_heads": [4, 8]}
  with pytest.raises(ValueError, match=r"num_heads=\(4, 8\): the model has \(2, 4\); set "
                                       r"--config\.model\.num_heads=4"):
    weights.convert(hf.state_dict(), abstract_model(), (swin.SWIN,), hf_config=doubled)
