"""Name tables and the walker that reads a PyTorch state dict into our parameter tree.

A table maps our parameter paths ("encoder/patch_embed", "mlp/fc1") to where each part lives
in a checkpoint: a key (a str), read by what the target node holds; a nested table for that
sub-tree; or a spec, an object with `read(reader, prefix, target, path) -> our sub-tree` (those
below, or a source's own). Keys are relative to the walk's prefix, which `Blocks` and `Within`
extend, so one block table serves every block.

A key (str) is read according to the target node:
- a bare array (a CLS or mask token, a token-type table): saved as is;
- {"embedding"} (a learned position table [N, D]): saved with a batch axis, [1, N, D];
- {"scale", "bias", "mean", "var"} (BatchNorm): torch `weight`, `bias`, `running_mean`,
  `running_var`; `num_batches_tracked` is consumed;
- {"scale", "bias"} (LayerNorm): torch `weight` and `bias`;
- {"kernel"} of 3 or more axes (a convolution): torch weight [D, C, *k] -> [*k, C, D]; a
  one-frame 3-D kernel also reads a Conv2d weight [D, C, kh, kw];
- {"kernel"} of 2 axes (a Linear): torch weight [out, in] -> [in, out].
An optional "bias" is read as torch `bias`.

The `Reader` remembers which checkpoint entries were used and why a parameter could not be
filled, so that one error lists every problem (`vidtx.weights.convert`).
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from vidtx.weights import files, inflate


class Reader:
  """Hands out checkpoint arrays, remembering which were used and why a parameter could not be
  filled, so that one error lists every problem."""

  def __init__(self, state_dict):
    self.arrays = {k: files.to_numpy(v) for k, v in state_dict.items()}
    self.used = set()
    self.reasons = {}  # our parameter path -> why it is not filled
    self.mismatches = []  # checkpoint entries that carry no parameter but disagree with ours
    self.hints = []  # the likely fixes, shown when the conversion fails

  def take(self, key: str, shape, *targets: str):
    """The array `key` as float32, which must have `shape` (torch layout) to become `targets`;
    None if it is absent or has another shape (the reason is recorded for each target)."""
    if key not in self.arrays:
      reason = f"the checkpoint has no {key}"
    else:
      self.used.add(key)
      value = self.arrays[key]
      if value.shape == tuple(shape):
        return value.astype(np.float32)
      reason = f"checkpoint {key} has shape {value.shape}, the model needs {tuple(shape)}"
    for target in targets:
      self.reasons.setdefault(target, []).append(reason)
    return None

  def consume(self, key: str):
    """Marks `key` used and returns it (None if absent): for entries that carry no parameter."""
    if key in self.arrays:
      self.used.add(key)
    return self.arrays.get(key)

  def consume_prefixed(self, *prefixes: str) -> None:
    """Marks every key starting with one of `prefixes` used: parts a model does not read."""
    for key in self.arrays:
      if key.startswith(prefixes):
        self.used.add(key)

  def ndim(self, key: str) -> int | None:
    return self.arrays[key].ndim if key in self.arrays else None

  def unused(self) -> list[str]:
    return sorted(set(self.arrays) - self.used)


def shape(leaf) -> tuple:
  return tuple(leaf.shape)


def _optional_bias(reader, key, target, path) -> dict:
  """{"bias": torch `bias`} if the target has a bias, else {}."""
  if "bias" not in target:
    return {}
  return {"bias": reader.take(f"{key}.bias", shape(target["bias"]), f"{path}/bias")}


def _dense(reader, key, target, path):
  """torch Linear weight [out, in] -> kernel [in, out]; the bias as is."""
  d_in, d_out = shape(target["kernel"])
  weight = reader.take(f"{key}.weight", (d_out, d_in), f"{path}/kernel")
  return {"kernel": None if weight is None else weight.T,
          **_optional_bias(reader, key, target, path)}


def _layer_norm(reader, key, target, path):
  """LayerNorm weight -> scale; the bias as is."""
  return {"scale": reader.take(f"{key}.weight", shape(target["scale"]), f"{path}/scale"),
          **_optional_bias(reader, key, target, path)}


def _batch_norm(reader, key, target, path):
  """BatchNorm weight -> scale, bias, and the running statistics running_mean -> mean,
  running_var -> var (our nnx.BatchStat variables); its num_batches_tracked is not needed."""
  out = {}
  for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                       ("var", "running_var")):
    if ours in target:  # affine=False norms have no scale or bias
      out[ours] = reader.take(f"{key}.{theirs}", shape(target[ours]), f"{path}/{ours}")
  reader.consume(f"{key}.num_batches_tracked")
  return out


def _conv(reader, key, target, path):
  """torch ConvNd weight [D, C, *k] -> kernel [*k, C, D]; into a one-frame 3-D kernel
  [1, kh, kw, C, D] also a Conv2d weight [D, C, kh, kw] (a per-frame patch embedding)."""
  *k, c, d = shape(target["kernel"])
  per_frame = len(k) == 3 and k[0] == 1 and reader.ndim(f"{key}.weight") == 4
  weight = reader.take(f"{key}.weight", (d, c, *(k[1:] if per_frame else k)), f"{path}/kernel")
  if weight is not None:
    weight = weight.reshape(d, c, *k).transpose(*range(2, 2 + len(k)), 1, 0)
  return {"kernel": weight, **_optional_bias(reader, key, target, path)}


def _read_key(reader, key, target, path):
  """A checkpoint key read as the target node's kind calls for (see the module docstring)."""
  if not isinstance(target, Mapping):
    return reader.take(key, shape(target), path)
  if set(target) == {"embedding"}:  # learned tables are saved as [1, N, D]
    table = reader.take(key, (1, *shape(target["embedding"])), f"{path}/embedding")
    return {"embedding": None if table is None else table[0]}
  if "mean" in target and "var" in target:
    return _batch_norm(reader, key, target, path)
  if "scale" in target:
    return _layer_norm(reader, key, target, path)
  if "kernel" in target and len(shape(target["kernel"])) >= 3:
    return _conv(reader, key, target, path)
  if "kernel" in target:
    return _dense(reader, key, target, path)
  raise AssertionError(f"no reader for {path} {sorted(target)}: give its table entry a spec")


@dataclasses.dataclass(frozen=True)
class Attention:
  """Our `layers.Attention` (qkv [D, 3, heads, head_dim], q/k/v biases [heads * head_dim],
  proj [heads, head_dim, D], proj_bias) from torch Linears: `qkv` one fused q/k/v Linear (rows
  q, k, v, each head-major) or three (query, key, value); `proj` the output Linear.

  `biases`: the keys of separate bias parameters (VideoMAE's q_bias and v_bias beside bias-free
  Linears); None: the biases are the q/k/v Linears' own. A model without a k bias keeps only
  the q and v parts of those: the k part adds q . b_k to every logit of a query's row alike,
  which the softmax cancels, so the outputs are unchanged. A model without biases reads none,
  so a checkpoint's are reported unused.
  """
  qkv: str | tuple[str, str, str]
  proj: str
  biases: Mapping[str, str] | None = None

  def read(self, reader, prefix, target, path):
    names = (self.qkv,) if isinstance(self.qkv, str) else self.qkv
    names = [prefix + name for name in names]
    qkv_shape = shape(target["qkv"])
    dim, _, heads, head_dim = qkv_shape
    inner = heads * head_dim
    rows = 3 * inner // len(names)
    weights = [reader.take(f"{name}.weight", (rows, dim), f"{path}/qkv") for name in names]
    out = {"qkv": None if any(w is None for w in weights) else
           np.concatenate(weights).T.reshape(qkv_shape)}
    bias_names = [b for b in ("q_bias", "k_bias", "v_bias") if b in target]
    if self.biases is not None:
      for b in bias_names:
        if b in self.biases:  # else unfilled: the layout has no such bias
          out[b] = reader.take(prefix + self.biases[b], shape(target[b]), f"{path}/{b}")
    elif bias_names:
      biases = [reader.take(f"{name}.bias", (rows,), *(f"{path}/{b}" for b in bias_names))
                for name in names]
      bias = None if any(b is None for b in biases) else np.concatenate(biases)
      for i, b in enumerate(("q_bias", "k_bias", "v_bias")):
        if b in target:
          out[b] = None if bias is None else bias[i * inner:(i + 1) * inner]
    proj = prefix + self.proj
    weight = reader.take(f"{proj}.weight", (dim, inner), f"{path}/proj")
    # torch [D, heads * head_dim] -> [heads, head_dim, D]
    out["proj"] = None if weight is None else weight.T.reshape(shape(target["proj"]))
    out["proj_bias"] = reader.take(f"{proj}.bias", shape(target["proj_bias"]),
                                   f"{path}/proj_bias")
    return out


@dataclasses.dataclass(frozen=True)
class Blocks:
  """A list of modules (blocks, stages) {0: ..., 1: ...}: module i from `table`, its keys under
  `name.format(i) + "."`."""
  name: str
  table: Mapping

  def read(self, reader, prefix, target, path):
    return {i: walk(reader, self.table, target[i], f"{path}/{i}/",
                    f"{prefix}{self.name.format(i)}.") for i in target}


@dataclasses.dataclass(frozen=True)
class Within:
  """A sub-tree from `table` with its keys under `prefix` (one model saved inside another)."""
  prefix: str
  table: Mapping

  def read(self, reader, prefix, target, path):
    return walk(reader, self.table, target, f"{path}/", prefix + self.prefix)


@dataclasses.dataclass(frozen=True)
class Unbatched:
  """A token or table saved without the axes of 1 in front: [D] for a CLS token [1, 1, D],
  [N, D] (an nn.Embedding weight) for a position table that ViTs save as [1, N, D]."""
  key: str

  def read(self, reader, prefix, target, path):
    if isinstance(target, Mapping):  # {"embedding": [N, D]}
      return {"embedding": reader.take(prefix + self.key, shape(target["embedding"]),
                                       f"{path}/embedding")}
    saved = shape(target)
    while saved and saved[0] == 1:
      saved = saved[1:]
    value = reader.take(prefix + self.key, saved, path)
    return None if value is None else value.reshape(shape(target))


@dataclasses.dataclass(frozen=True)
class Inflated:
  """A 3-D convolution from a Conv2d weight [D, C, kh, kw] of an image model, inflated over the
  kernel's frames by `inflation` (`vidtx.weights.inflate.kernel`)."""
  key: str
  inflation: str

  def read(self, reader, prefix, target, path):
    kt, kh, kw, c, d = shape(target["kernel"])
    key = prefix + self.key
    weight = reader.take(f"{key}.weight", (d, c, kh, kw), f"{path}/kernel")
    kernel = None if weight is None else inflate.kernel(
        weight.transpose(2, 3, 1, 0)[None], kt, self.inflation)
    return {"kernel": kernel, **_optional_bias(reader, key, target, path)}


@dataclasses.dataclass(frozen=True)
class Absent:
  """A part this layout does not have: `reason` (how to fix the config) is given for it."""
  reason: str

  def read(self, reader, prefix, target, path):
    reader.reasons[path] = [self.reason]
    return None


def walk(reader: Reader, table: Mapping, target: Mapping, path: str = "",
         prefix: str = "") -> dict:
  """Our params for `target` (a nested pure dict of our parameters) from `table`, reading the
  checkpoint keys under `prefix`; `path` ("" or ending in "/") names the target in messages.
  Parts the model lacks (a time embedding, a classifier) are skipped, so a checkpoint that has
  them reports them unused."""
  out = {}
  for ours, spec in table.items():
    part, where = _get(target, ours), f"{path}{ours}"
    if part is None:
      continue
    if isinstance(spec, str):
      value = _read_key(reader, prefix + spec, part, where)
    elif isinstance(spec, Mapping):
      value = walk(reader, spec, part, f"{where}/", prefix)
    else:
      value = spec.read(reader, prefix, part, where)
    _put(out, ours, value)
  return out


def _get(tree, path: str):
  """The node of `tree` at `path` ("a/b/c"), or None."""
  for part in path.split("/"):
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _put(tree: dict, path: str, value) -> None:
  """Sets `path` of `tree` to `value`, merging into a dict already there ("attn" and
  "attn/relative_position_bias_table" in one table)."""
  *parents, leaf = path.split("/")
  for part in parents:
    tree = tree.setdefault(part, {})
  if isinstance(tree.get(leaf), dict) and isinstance(value, dict):
    tree[leaf].update(value)
  else:
    tree[leaf] = value
