"""What every vidtx command shares: the --config flag, flag parsing, one-line errors, a quiet log.

A command (vidtx.main, vidtx.predict, vidtx.tools.*, vidtx.data.check and convert_videos)
defines its flags, the config with `define_config`, and runs with `run(main)` in place of absl's
`app.run(main)`:
- a mistake on the command line (a misspelt config field, a value of the wrong type, a config
  file that is missing or fails, an unknown or missing flag) ends the command before `main` with
  one line "error: ..." that names the flag and the fix, and exit status 1;
- an error a user can fix raised in `main` ends it the same way, without a traceback: those of
  vidtx.errors, an OSError (a missing file, no permission, a full disk: with its path), the file
  errors of TensorFlow and of tensorstore (which writes orbax's checkpoints), and the command's
  own `user_errors`;
- orbax's INFO chatter is kept out of the log.
Paths a command writes or reads are checked before any work starts (`check_writable`,
`check_readable`), so a typo fails at once, naming its flag.
"""

import logging as std_logging
import os
import re
import sys
import threading
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vidtx import errors

# An override of a config field, as ml_collections finds them: --config.<field>[=<value>].
_OVERRIDE = re.compile(r"--?(no)?config\.([^=]+)(?:=(.*))?", re.DOTALL)
_CONFIG = re.compile(r"--?config(?:=(.*))?", re.DOTALL)


def define_config(help_string: str,
                  flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """The --config flag: configs/<file>.py[:variant], locked, with fields overridden by
  --config.<field>=<value>."""
  return config_flags.DEFINE_config_file("config", None, help_string, flag_values=flag_values,
                                         lock_config=True)


def run(main, *, user_errors: tuple[type[Exception], ...] = ()) -> None:
  """Runs a command's `main` as absl's app.run does, with the flags parsed by `parse_flags`,
  orbax kept quiet and an error a user can fix (see `user_error_message`) ending the command in
  one line."""
  logging.get_absl_handler().addFilter(quiet_orbax)
  sys.unraisablehook = _unraisable_but_closed_loops

  def main_ending_in_one_line(argv):
    try:
      return call(main, argv, user_errors)
    except SystemExit as e:
      if isinstance(e.code, str):
        # Threads left by a failed orbax save may still log the failure their way: the error
        # line stays the last.
        std_logging.disable(std_logging.CRITICAL)
      if isinstance(e.code, str) and _threads_left():
        # A failed orbax save leaves threads that wait out a 300 s barrier before the process
        # may end: nothing is left to finish, so end it now.
        print(e.code, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
      raise

  app.run(main_ending_in_one_line, flags_parser=parse_flags)


def call(main, argv: list[str], user_errors: tuple[type[Exception], ...] = ()):
  """main(argv), where an error a user can fix raises SystemExit("error: <one line>")."""
  try:
    return main(argv)
  except Exception as e:  # pylint: disable=broad-exception-caught
    message = user_error_message(e, user_errors)
    if message is None:
      raise  # a bug: its traceback is what finds it
    # One line, whatever the message: a wrapped library error may carry line breaks.
    raise SystemExit(f"error: {' '.join(message.split())}") from None


def user_error_message(e: Exception,
                       user_errors: tuple[type[Exception], ...] = ()) -> str | None:
  """The line that says what went wrong and where, for an error a user can fix; None for any
  other (a bug)."""
  if isinstance(e, (errors.ConfigError, errors.DataNotFoundError, errors.ProcessMismatchError,
                    errors.FlagError, *user_errors)):
    return str(e)
  if isinstance(e, OSError):
    if e.filename is None or not e.strerror:  # one of ours: its message names the path
      return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
    return f"{where}: {e.strerror}"
  if isinstance(e, ValueError) and "[os_error_code=" in str(e):
    # tensorstore, writing orbax's arrays, failed on the file system (a full disk): the message
    # names the file and the OS error.
    return str(e).splitlines()[0]
  tensorflow = sys.modules.get("tensorflow")  # imported by then if it raised
  if tensorflow is not None and isinstance(e, (tensorflow.errors.NotFoundError,
                                               tensorflow.errors.PermissionDeniedError)):
    return e.message.splitlines()[0]
  return None


def check_writable(flag: str, path: str, *, file: bool = False) -> None:
  """Raises errors.FlagError naming --<flag> unless `path` can be written: a directory (with
  file=True: a file) that exists or can be made, in a directory we may write in. Creates
  nothing."""
  full = os.path.abspath(path)
  if file and os.path.isdir(full):
    raise errors.FlagError(f"--{flag}={path} is a directory: give a file name")
  existing = os.path.dirname(full) if file else full
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  fix = "give a path in a directory" if file else "give a directory"
  if not os.path.isdir(existing):
    raise errors.FlagError(f"--{flag}={path} is a file, not a directory: {fix}"
                           if existing == full else
                           f"--{flag}={path}: {existing} is a file, not a directory: {fix}")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.FlagError(f"--{flag}={path}: no permission to write in {existing}")


def check_readable(flag: str, path: str) -> None:
  """Raises errors.FlagError naming --<flag> unless `path` exists and may be read."""
  if not os.path.exists(path):
    raise errors.FlagError(f"--{flag}={path} does not exist")
  if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
    raise errors.FlagError(f"--{flag}={path}: no permission to read it")


def quiet_orbax(record: std_logging.LogRecord) -> bool:
  """A log filter: orbax logs every save step at INFO; keep its warnings and errors. A failed
  save's exception reaches `main`, which reports it in one line, so the tracebacks orbax logs
  with it (one per thread) are dropped, and so are asyncio's reports of the same failure in
  orbax's write tasks that nobody awaited ("Task exception was never retrieved")."""
  if record.name == "asyncio" and record.exc_info and any(
      "/orbax/" in frame.filename for frame in traceback.extract_tb(record.exc_info[2])):
    return False
  if "/orbax/" not in record.pathname:
    return True
  record.exc_info = record.exc_text = None
  return record.levelno >= std_logging.WARNING


def _unraisable_but_closed_loops(unraisable) -> None:
  """sys.unraisablehook, less the "Event loop is closed" that each of tensorstore's callbacks
  reports when an orbax save fails (the failure itself is reported in one line)."""
  if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def _threads_left() -> bool:
  return any(t.is_alive() and not t.daemon and t is not threading.main_thread()
             for t in threading.enumerate())


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses `argv` into `flag_values` as absl does (app.run's flags_parser) and returns the
  arguments left; a mistake raises SystemExit("error: <one line>") instead."""
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-exception-caught
    message = _parse_error_message(e, argv, flag_values)
    if message is None:
      raise
    raise SystemExit(f"error: {message}") from None
  if "config" in flag_values:
    config_flag = flag_values["config"]
    # ml_collections defers a config file it cannot open to the config's first use.
    if config_flag.value is not None and not isinstance(config_flag.value,
                                                        ml_collections.ConfigDict):
      try:
        config_flag.value.lock()
      except OSError as e:
        raise SystemExit(
            f"error: {_unreadable_config(config_flag.config_filename, e)}") from None
  return rest


def _config_arguments(argv: list[str]) -> tuple[str | None, list[tuple[str, object]]]:
  """(the value of --config, [(field, value) of each --config.<field>]) in `argv`."""
  spec, overrides = None, []
  args = argv[1:]
  for i, arg in enumerate(args):
    if arg == "--":
      break
    following = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
    if match := _CONFIG.fullmatch(arg):
      spec = match[1] if match[1] is not None else following
    elif match := _OVERRIDE.fullmatch(arg):
      negated, field, value = match.groups()
      if value is None:  # --config.<field> <value>, or a boolean's --[no]config.<field>
        value = following if following is not None else not negated
      overrides.append((field, value))
  return spec, overrides


def _parse_error_message(e: Exception, argv: list[str], flag_values: flags.FlagValues):
  """The line for an error raised while parsing `argv`, or None for a bug."""
  spec, overrides = _config_arguments(argv) if "config" in flag_values else (None, [])
  if spec is not None:
    path = spec.partition(":")[0]
    if not os.path.isfile(path) or isinstance(e, OSError):
      return _unreadable_config(spec, e)
    message = _config_file_error(e, spec)
    if message is not None:
      return message
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override of no field
      known = errors.config_fields(flag_values["config"].parser.parse(spec))
      for field, value in overrides:
        if field not in known and not any(k.startswith(f"{field}.") for k in known):
          return str(errors.unknown_field(field, value, known))
  if isinstance(e, flags.Error):
    return _flag_error_message(e, flag_values)
  return None


def _unreadable_config(spec: str, error: Exception) -> str:
  """The line for a config file ml_collections could not open (`error`)."""
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    return f"--config={spec}: no such file ({os.path.abspath(path)})"
  return f"--config={spec}: {str(error).strip().splitlines()[-1].strip()}"


def _config_file_error(e: Exception, spec: str) -> str | None:
  """The line for an error of the config file: raised in it, while Python reads it or by its
  get_config (which ml_collections wraps, with the traceback in the message); else None."""
  chain = [e]
  while chain[-1].__context__ is not None:
    chain.append(chain[-1].__context__)
  cause = chain[-1]
  path = spec.partition(":")[0]
  wrapped = str(e).startswith(f"flag --config={spec}: Error whilst parsing config file")
  lines = [frame.lineno for frame in traceback.extract_tb(cause.__traceback__)
           if os.path.abspath(frame.filename) == os.path.abspath(path)]
  if isinstance(cause, SyntaxError) and cause.filename is not None and \
      os.path.abspath(cause.filename) == os.path.abspath(path):
    lines.append(cause.lineno)
    reason = f"SyntaxError: {cause.msg}"
  elif wrapped or lines:
    reason = str(cause) if isinstance(cause, ValueError) else f"{type(cause).__name__}: {cause}"
  else:
    return None
  if isinstance(cause, ValueError) or not lines:
    return f"--config={spec}: {reason}"  # its get_config's own message, which gives the fix
  return f"--config={spec}: {reason} ({path}:{lines[-1]})"


def _flag_error_message(e: flags.Error, flag_values: flags.FlagValues) -> str:
  message = str(e)
  if match := re.fullmatch(r"flag --(config\.[^=]+)=(.*?): (.*)", message, re.DOTALL):
    name, value, reason = match.groups()
    default = flag_values[name].default if name in flag_values else None
    if default is not None:  # a value that does not parse as the field's type
      kind = type(default).__name__
      return (f"--{name}={value}: {reason.splitlines()[0]}; {name} takes "
              f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} like {default!r}")
  if match := re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.",
                           message):
    return f"--{match[1]} is required: {flag_values[match[1]].help}"
  if isinstance(e, flags.UnrecognizedFlagError):
    return f"{message} (--helpfull lists the flags)"
  return message.splitlines()[0]
