"""The errors a user can fix, raised by the module that owns the setting or the data.

A leaf module: it imports nothing of vidtx, so every owner (configuration, data, checkpoint,
sharding, optim, each model family) can raise these without importing each other. Entry points
catch them and print the message alone: it names the field or file and the fix.
"""


class ConfigError(ValueError):
  """A config field that cannot work; the message names the field and the fix."""


class DataNotFoundError(FileNotFoundError, ValueError):
  """The data directory or the shards of a split are missing."""


class ProcessMismatchError(ValueError):
  """Processes of one run started with different configs, code or checkpoints."""


def fail(field: str, value, fix: str):
  """Raises ConfigError "config.<field>=<value>: <fix>"."""
  raise ConfigError(f"config.{field}={value!r}: {fix}")
