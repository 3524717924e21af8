"""The errors a user can fix, raised by the module that owns the setting or the data.

A leaf module: it imports nothing of vidtx, so every owner (configuration, data, checkpoint,
sharding, optim, each model family) can raise these without importing each other. Entry points
catch them and print the message alone: it names the field or file and the fix. A misspelt
config field is worded once (`unknown_field`), for configs built in code and on the command line.
"""

import difflib

import ml_collections


class ConfigError(ValueError):
  """A config field that cannot work; the message names the field and the fix."""


class DataNotFoundError(FileNotFoundError, ValueError):
  """The data directory or the shards of a split are missing."""


class ProcessMismatchError(ValueError):
  """Processes of one run started with different configs, code or checkpoints."""


class FlagError(ValueError):
  """A command-line flag other than the config's (a path to read or write, a count) that cannot
  work; the message names the flag and the fix."""


def fail(field: str, value, fix: str):
  """Raises ConfigError "config.<field>=<value>: <fix>"."""
  raise ConfigError(f"config.{field}={value!r}: {fix}")


def config_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{"model.vit.pool": value, ...}: the leaves of a config, by their dotted names."""
  leaves = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      leaves.update(config_fields(value, f"{prefix}{key}."))
    else:
      leaves[f"{prefix}{key}"] = value
  return leaves


def unknown_field(field: str, value, known) -> ConfigError:
  """The ConfigError for config.<field>=<value>, none of the dotted field names `known`: it names
  the closest of them, as a misspelling is the likely cause."""
  close = difflib.get_close_matches(field, list(known), n=1)
  return ConfigError(f"config.{field}={value!r}: is not a config field of this vidtx version"
                     + (f": did you mean config.{close[0]}?" if close else ""))
