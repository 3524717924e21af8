"""The table walker's leaves: a PyTorch BatchNorm's parameters and running statistics, and the
completeness check over parameters and statistics together."""

import numpy as np
import pytest
from flax import nnx

from vidtx import weights
from vidtx.models import layers
from vidtx.weights import tables

torch = pytest.importorskip("torch")

CHANNELS = 6


def perturbed_batch_norm(seed=0):
  """A torch BatchNorm3d whose weight, bias and running statistics are all random (the
  defaults 1, 0, 0, 1 would hide a swap), in eval mode."""
  generator = torch.Generator().manual_seed(seed)
  norm = torch.nn.BatchNorm3d(CHANNELS)
  with torch.no_grad():
    norm.weight.copy_(1 + 0.3 * torch.randn(CHANNELS, generator=generator))
    norm.bias.copy_(0.3 * torch.randn(CHANNELS, generator=generator))
    norm.running_mean.copy_(torch.randn(CHANNELS, generator=generator))
    norm.running_var.copy_(0.5 + torch.rand(CHANNELS, generator=generator))
  norm.num_batches_tracked.fill_(7)
  return norm.eval()


def test_batch_norm_leaf_fills_scale_bias_and_the_running_statistics():
  norm = perturbed_batch_norm()
  state = {f"stem.norm.{k}": v for k, v in norm.state_dict().items()}
  reader = tables.Reader(state)
  target = {"stem": {"norm": {name: np.zeros(CHANNELS, np.float32)
                              for name in ("scale", "bias", "mean", "var")}}}
  out = tables.walk(reader, {"stem/norm": "stem.norm"}, target)
  got = out["stem"]["norm"]
  for ours, theirs in (("scale", norm.weight), ("bias", norm.bias),
                       ("mean", norm.running_mean), ("var", norm.running_var)):
    np.testing.assert_array_equal(got[ours], theirs.detach().numpy(), err_msg=ours)
  assert reader.unused() == []  # num_batches_tracked is consumed


class Net(nnx.Module):
  """Our BatchNorm over channels-last activations, as the convolution nets hold one."""

  def __init__(self):
    self.norm = layers.BatchNorm(CHANNELS, rngs=nnx.Rngs(0))


SOURCE = weights.Source(name="torch BatchNorm", keys="'norm...'",
                        detect=lambda keys: any(k.startswith("norm.") for k in keys),
                        convert=lambda reader, target, model: tables.walk(
                            reader, {"norm": "norm"}, target))


def test_converted_batch_norm_normalises_as_torch_in_evaluation():
  norm = perturbed_batch_norm(1)
  state_dict = {f"norm.{k}": v for k, v in norm.state_dict().items()}
  net = Net()
  params = weights.convert(state_dict, net, (SOURCE,))
  state = nnx.state(net, (nnx.Param, nnx.BatchStat))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(net, state)
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 4, CHANNELS)).astype(np.float32)
  with torch.no_grad():
    expected = norm(torch.from_numpy(x.transpose(0, 4, 1, 2, 3))).numpy().transpose(0, 2, 3, 4, 1)
  ours = net.norm(x, train=False)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_missing_running_statistics_are_named():
  state_dict = {f"norm.{k}": v for k, v in perturbed_batch_norm().state_dict().items()
                if k != "running_var"}
  with pytest.raises(ValueError, match=r"not filled \(1\):\n +norm/var \(6,\): the checkpoint "
                                       r"has no norm\.running_var"):
    weights.convert(state_dict, Net(), (SOURCE,))
