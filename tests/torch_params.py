"""Random parameters for the PyTorch reference models of the parity tests."""

import torch


def randomise(model, seed: int = 0):
  """Every parameter of `model` random, so that a mis-mapped bias, norm or embedding shows.

  Reference libraries start biases and norms at constants and weights at std 0.02 (near-uniform
  attention, which would hide swapped q and k). Here Linear and conv weights get std
  1/sqrt(fan in), LayerNorm scales 1 + 0.2 N(0, 1), and everything else (biases, q and v biases,
  CLS and mask tokens, position and token-type tables, relative position bias tables)
  0.2 N(0, 1). Returns the model in eval mode.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      for name, p in module.named_parameters(recurse=False):
        noise = torch.randn(p.shape, generator=generator)
        weighted = isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))
        if name == "weight" and weighted:
          p.copy_(noise * p[0].numel() ** -0.5)  # Linear [out, in], conv [out, in, k...]
        elif name == "weight" and isinstance(module, torch.nn.LayerNorm):
          p.copy_(1.0 + 0.2 * noise)
        else:
          p.copy_(0.2 * noise)
  return model.eval()


def randomise_batchnorm(model, seed: int = 0):
  """`model` with random BatchNorm scales (around 1), running means and positive running
  variances (their biases are `randomise`'s), so that a statistic read into the wrong place, or
  not read, shows."""
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        c = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
        m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
  return model
