"""Video data: the synthetic motion dataset and the DMVR TFRecord input pipeline."""

# dmvr is imported first: it configures TensorFlow (quiet logs, no GPU) before anything uses it.
from vidtx.data import dmvr
from vidtx.data import synthetic
from vidtx.data.dmvr import build, DataNotFoundError, num_examples

SYNTHETIC = "synthetic_motion"


def prepare(data_config, workdir):
  """Makes sure the dataset exists and returns its directory (pass it to `build`).

  synthetic_motion is generated on first use into config.data.data_dir, or into
  <workdir>/data/synthetic_motion when that is "". Other datasets must already be in
  config.data.data_dir; a DataNotFoundError says what is missing.
  """
  if data_config.name == SYNTHETIC:
    return synthetic.prepare(data_config, workdir)
  how = (f"Prepare {data_config.name!r} as DMVR TFRecord shards (README, section Data) and pass "
         "--config.data.data_dir=<their directory>; or try this config on the built-in data "
         f"with --config.data.name={SYNTHETIC}.")
  if not data_config.data_dir:
    raise DataNotFoundError(
        f"Dataset {data_config.name!r} is read from disk, but config.data.data_dir is empty, so "
        f"there is nowhere to look. {how}")
  try:
    for split in (data_config.train_split, data_config.eval_split):
      dmvr.list_files(data_config.data_dir, split)  # raises naming the missing files
  except DataNotFoundError as e:
    raise DataNotFoundError(f"Dataset {data_config.name!r} is not prepared: {e} {how}") from None
  return data_config.data_dir


__all__ = ["build", "prepare", "num_examples", "DataNotFoundError", "SYNTHETIC"]
