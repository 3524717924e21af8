"""The command lines: a user's mistake ends in one line "error: ..." that names the flag or path
and the fix, never in a traceback, for every entry point; orbax's chatter stays out of the log."""

import ast
import logging
import os
import resource
import signal
import subprocess
import sys

import pytest
from absl import flags

from test_train import ROOT, TINY, data_dir, flag_args, tiny_config  # noqa: F401 (a fixture)
from vidtx import cli, configuration, errors, main, predict, train
from vidtx.data import check, convert_videos, video_files
from vidtx.tools import convert_weights, export, flops, visualize_attention, visualize_masks

ENTRY_POINTS = (main, predict, flops, convert_weights, export, visualize_masks,
                visualize_attention, check, convert_videos)
CONFIGURED = tuple(entry for entry in ENTRY_POINTS if entry is not convert_videos)  # --config
DEMO = os.path.join(ROOT, "configs", "demo.py")


def parse(entry, args, monkeypatch):
  """`entry`'s command line `args`, parsed into fresh flags as `cli.run` parses them; the flags
  become absl's FLAGS, which `entry.main` reads."""
  flag_values = flags.FlagValues()
  entry.define_flags(flag_values)
  argv = [entry.__name__, *args]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  monkeypatch.setattr(flags, "FLAGS", flag_values)
  return cli.parse_flags(argv, flag_values)


def error_of(entry, args, monkeypatch) -> str:
  """The one line `entry`'s command line `args` end with: at parsing or in `main`."""
  with pytest.raises(SystemExit) as exit_:
    rest = parse(entry, args, monkeypatch)
    cli.call(entry.main, rest)
  assert isinstance(exit_.value.code, str) and "\n" not in exit_.value.code, exit_.value.code
  return exit_.value.code


@pytest.mark.parametrize("entry", CONFIGURED, ids=lambda entry: entry.__name__)
@pytest.mark.parametrize("field, value, suggestion", [
    ("optim.lrr", "1e-3", "optim.lr"), ("model.sise", "S", "model.size"),
    ("model.vtn.windw", "2", "model.vtn.window"), ("model.window", "2", "model.vtn.window")])
def test_a_misspelt_field_is_named_with_the_likely_one(entry, field, value, suggestion,
                                                       monkeypatch):
  message = error_of(entry, [f"--config={DEMO}", f"--config.{field}={value}"], monkeypatch)
  assert message == (f"error: config.{field}={value!r}: is not a config field of this vidtx "
                     f"version: did you mean config.{suggestion}?")


def test_a_field_with_no_likely_one_and_a_section_that_does_not_exist(monkeypatch):
  assert error_of(flops, [f"--config={DEMO}", "--config.qqq.zzz=2"], monkeypatch) == (
      "error: config.qqq.zzz='2': is not a config field of this vidtx version")


def test_a_value_of_the_wrong_type_names_the_type(monkeypatch):
  message = error_of(main, [f"--config={DEMO}", "--workdir=/tmp/unused",
                            "--config.total_steps=abc"], monkeypatch)
  assert message.startswith("error: --config.total_steps=abc: ")
  assert message.endswith(f"config.total_steps takes an int like "
                          f"{configuration.load(DEMO).total_steps}")
  message = error_of(main, [f"--config={DEMO}", "--config.optim.lr=fast"], monkeypatch)
  assert message.startswith("error: --config.optim.lr=fast: ") and "a float like" in message


@pytest.mark.parametrize("overrides", [[], ["--config.total_steps=3"]])
def test_a_missing_config_file_is_named(overrides, monkeypatch):
  message = error_of(flops, ["--config=configs/nope.py", *overrides], monkeypatch)
  assert message == (f"error: --config=configs/nope.py: no such file "
                     f"({os.path.join(os.getcwd(), 'configs/nope.py')})")


def test_a_variant_the_file_refuses_gives_its_message(monkeypatch):
  message = error_of(main, [f"--config={ROOT}/configs/mar_k400.py:bogus", "--workdir=/tmp/x"],
                     monkeypatch)
  assert message.startswith(f"error: --config={ROOT}/configs/mar_k400.py:bogus: unknown variant "
                            "'bogus'")


def test_a_broken_config_file_is_named_with_its_line(tmp_path, monkeypatch):
  path = tmp_path / "broken.py"
  path.write_text("def get_config(arg=None):\n  return undefined_name\n")
  assert error_of(flops, [f"--config={path}"], monkeypatch) == (
      f"error: --config={path}: NameError: name 'undefined_name' is not defined ({path}:2)")
  path.write_text("def get_config(arg=None):\n  return (\n")
  message = error_of(flops, [f"--config={path}"], monkeypatch)
  assert message.startswith(f"error: --config={path}: SyntaxError: ") and f"({path}:2)" in message


def test_unknown_and_missing_flags(monkeypatch):
  message = error_of(main, [f"--config={DEMO}", "--workdri=/tmp/x"], monkeypatch)
  assert message.startswith("error: ") and "'workdri'" in message and "--helpfull" in message
  message = error_of(main, [f"--config={DEMO}"], monkeypatch)
  assert message.startswith("error: --workdir is required: Directory for checkpoints")


def test_good_flags_parse_with_their_overrides(monkeypatch):
  rest = parse(main, [f"--config={DEMO}", "--workdir=/tmp/x", "--config.optim.lr=0.5",
                      "--config.model.vtn.window=3"], monkeypatch)
  assert rest == ["vidtx.main"]
  config = flags.FLAGS.config
  assert (config.optim.lr, config.model.vtn.window, flags.FLAGS.workdir) == (0.5, 3, "/tmp/x")
  assert config.is_locked


def test_every_entry_point_runs_through_cli():
  """Each command's `__main__` block defines its flags and calls cli.run (not app.run)."""
  for entry in ENTRY_POINTS:
    tree = ast.parse(open(entry.__file__).read())
    block, = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test) == "__name__ == '__main__'"]
    calls = [ast.unparse(node.func) for node in ast.walk(block) if isinstance(node, ast.Call)]
    assert calls[:2] == ["define_flags", "cli.run"], (entry.__name__, calls)
    assert "app.run" not in ast.unparse(tree), entry.__name__


def test_the_command_line_ends_in_one_line_without_a_traceback(tmp_path):
  out = subprocess.run([sys.executable, "-m", "vidtx.main", f"--config={DEMO}",
                        f"--workdir={tmp_path}", "--config.optim.lrr=1e-3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert out.stderr.splitlines()[-1] == ("error: config.optim.lrr='1e-3': is not a config field "
                                         "of this vidtx version: did you mean config.optim.lr?")


# Paths.

def test_a_workdir_that_is_a_file_or_under_one(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  for workdir, message in [
      (tmp_path / "file", f"error: --workdir={tmp_path}/file is a file, not a directory: "
                          "give a directory"),
      (tmp_path / "file" / "run", f"error: --workdir={tmp_path}/file/run: {tmp_path}/file is a "
                                  "file, not a directory: give a directory")]:
    assert error_of(main, [f"--config={DEMO}", f"--workdir={workdir}"], monkeypatch) == message


def test_check_writable_and_readable(tmp_path):
  (tmp_path / "file").write_text("x")
  cli.check_writable("out", str(tmp_path / "new" / "deeper"))  # nothing is created
  assert not os.path.exists(tmp_path / "new")
  cli.check_writable("output", str(tmp_path / "new" / "p.csv"), file=True)
  with pytest.raises(errors.FlagError, match=r"^--output=.* is a directory: give a file"):
    cli.check_writable("output", str(tmp_path), file=True)
  with pytest.raises(errors.FlagError, match=r"^--out=.*/file/x\.png: .*/file is a file"):
    cli.check_writable("out", str(tmp_path / "file" / "x.png"), file=True)
  cli.check_readable("video", str(tmp_path / "file"))
  with pytest.raises(errors.FlagError, match=r"^--video=.*/nope\.mp4 does not exist$"):
    cli.check_readable("video", str(tmp_path / "nope.mp4"))


@pytest.fixture
def run_without_checkpoint(tmp_path):
  """A workdir with a run's config.json but no checkpoint: a command that loaded the model
  before checking its other flags would fail on the checkpoint."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(tiny_config(str(tmp_path / "data")).to_json())
  (tmp_path / "file").write_text("not a video")
  return workdir


def test_predict_checks_the_video_and_the_output_before_the_checkpoint(run_without_checkpoint,
                                                                       monkeypatch):
  workdir, tmp = run_without_checkpoint, run_without_checkpoint.parent
  assert error_of(predict, [f"--workdir={workdir}", f"--video={tmp}/nope.mp4"], monkeypatch) == (
      f"error: --video={tmp}/nope.mp4 does not exist")
  message = error_of(predict, [f"--workdir={workdir}", f"--video={tmp}/file"], monkeypatch)
  assert message.startswith(f"error: {tmp}/file: corrupt")
  assert error_of(predict, [f"--workdir={workdir}", f"--video={tmp}/run",
                            f"--output={tmp}/file/p.csv"], monkeypatch) == (
      f"error: --output={tmp}/file/p.csv: {tmp}/file is a file, not a directory: give a path "
      "in a directory")
  assert error_of(predict, [f"--workdir={workdir}", f"--video={tmp}/run"], monkeypatch) == (
      f"error: --video={tmp}/run holds no video files ({', '.join(video_files.VIDEO_EXTENSIONS)})")


def test_export_checks_its_output_before_the_checkpoint(run_without_checkpoint, monkeypatch):
  workdir, tmp = run_without_checkpoint, run_without_checkpoint.parent
  assert error_of(export, [f"--workdir={workdir}", f"--output={tmp}/file"], monkeypatch) == (
      f"error: --output={tmp}/file is a file, not a directory: give a directory")
  assert error_of(export, [f"--workdir={tmp}/none", f"--output={tmp}/out"], monkeypatch) == (
      f"error: {tmp}/none/config.json does not exist: is '{tmp}/none' the workdir of a "
      "training run? Otherwise pass the config with --config")


def test_convert_weights_names_its_flags(tmp_path, monkeypatch):
  pytest.importorskip("torch")
  (tmp_path / "garbage.pth").write_bytes(b"PK\x03\x04" + b"not a zip archive" * 10)
  (tmp_path / "file").write_text("x")
  args = [f"--config={DEMO}", f"--checkpoint={tmp_path}/garbage.pth"]
  assert error_of(convert_weights, [*args, f"--out={tmp_path}/file"], monkeypatch) == (
      f"error: --out={tmp_path}/file is a file, not a directory: give a directory")
  message = error_of(convert_weights, [*args, f"--out={tmp_path}/out"], monkeypatch)
  assert message.startswith(f"error: --checkpoint={tmp_path}/garbage.pth: not a PyTorch "
                            "checkpoint")
  assert error_of(convert_weights, [f"--config={DEMO}", f"--checkpoint={tmp_path}/nope.pth",
                                    f"--out={tmp_path}/out"], monkeypatch).startswith(
      f"error: checkpoint '{tmp_path}/nope.pth' does not exist")


def test_convert_videos_checks_its_paths_first(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  (tmp_path / "videos").mkdir()
  args = ["--format=folders", f"--output_dir={tmp_path}/out"]
  assert error_of(convert_videos, args, monkeypatch) == (
      "error: --video_root is required: Directory holding the videos.")
  assert error_of(convert_videos, [*args, f"--video_root={tmp_path}/nope"], monkeypatch) == (
      f"error: --video_root={tmp_path}/nope does not exist")
  assert error_of(convert_videos, ["--format=folders", f"--video_root={tmp_path}/videos",
                                   f"--output_dir={tmp_path}/file"], monkeypatch) == (
      f"error: --output_dir={tmp_path}/file is a file, not a directory: give a directory")
  assert not os.path.exists(tmp_path / "out")
  # Then the videos: the converter's own errors end in one line too.
  assert error_of(convert_videos, [*args, f"--video_root={tmp_path}/videos"], monkeypatch) == (
      f"error: --video_root={str(tmp_path / 'videos')!r} has no videos in <split>/<class>/ "
      "folders")


def test_check_ends_in_one_line_naming_the_data_dir(tmp_path, monkeypatch):
  assert error_of(check, [f"--config={DEMO}", "--config.data.name=custom",
                          f"--config.data.data_dir={tmp_path}/nope"], monkeypatch).startswith(
      f"error: config.data.data_dir='{tmp_path}/nope' does not exist: ")
  assert error_of(check, [f"--config={DEMO}", "--config.data.name=custom"], monkeypatch) == (
      "error: config.data.data_dir is empty: pass --config.data.data_dir=<the converter's "
      "--output_dir>")


@pytest.mark.parametrize("entry", [visualize_masks, visualize_attention],
                         ids=lambda entry: entry.__name__)
def test_visualisers_check_their_out_and_video_first(entry, tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  assert error_of(entry, [f"--config={DEMO}", f"--out={tmp_path}/file/pictures"],
                  monkeypatch) == (f"error: --out={tmp_path}/file/pictures: {tmp_path}/file is a "
                                   "file, not a directory: give a path in a directory")
  if entry is visualize_attention:
    assert error_of(entry, [f"--config={DEMO}", f"--video={tmp_path}/nope.mp4",
                            f"--out={tmp_path}/pictures"], monkeypatch) == (
        f"error: --video={tmp_path}/nope.mp4 does not exist")


def test_os_errors_name_the_path(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(OSError) as e:
    open(tmp_path / "file" / "x.json", "w")
  assert cli.user_error_message(e.value) == f"{tmp_path}/file/x.json: Not a directory"
  assert cli.user_error_message(FileNotFoundError("no checkpoint in /x")) == "no checkpoint in /x"
  assert cli.user_error_message(KeyError("x")) is None  # a bug keeps its traceback


def test_a_full_disk_while_saving_ends_in_one_line(data_dir, tmp_path):  # noqa: F811
  """Files are limited to 32 KiB (as a full disk, the write fails with an OS error): the
  checkpoint's arrays, written by orbax through tensorstore, do not fit."""
  def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
  out = subprocess.run(
      [sys.executable, "-m", "vidtx.main", f"--config={DEMO}", f"--workdir={tmp_path}",
       *flag_args(data_dir, total_steps=6, checkpoint_every_steps=2)],
      cwd=ROOT, env=env, preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  last = [line for line in out.stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: ") and f"{tmp_path}/checkpoints/" in last, out.stderr[-3000:]
  assert "File too large" in last


# The end of a run.

def test_a_run_stopped_by_sigterm_ends_saying_what_it_saved(data_dir, tmp_path,  # noqa: F811
                                                             monkeypatch):
  compile_train_step = train.compile_train_step

  def compile_and_send_sigterm_at_the_first_step(setup):
    step = compile_train_step(setup)
    sent = []

    def first_step_sends_sigterm(*args):
      if not sent:
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
      return step(*args)
    return first_step_sends_sigterm

  monkeypatch.setattr(train, "compile_train_step", compile_and_send_sigterm_at_the_first_step)
  config = tiny_config(data_dir, total_steps=20)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  saved = max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved < 20
  assert main.last_line(config, str(tmp_path), metrics) == (
      f"Stopped after SIGTERM: step {saved} of 20 is saved in {tmp_path}/checkpoints; rerun the "
      "same command to resume.")
  assert main.last_line(config, str(tmp_path), {"top1": 0.5}) == 'result: {"top1": 0.5}'


# The log.

def record(pathname, level, exc_info=None):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, exc_info)


def test_orbax_info_is_dropped_and_its_errors_lose_their_tracebacks():
  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not cli.quiet_orbax(record(orbax, logging.INFO))
  assert cli.quiet_orbax(record("/work/vidtx/train.py", logging.INFO))
  try:
    raise OSError("disk full")
  except OSError:
    failed = record(orbax, logging.ERROR, sys.exc_info())
    ours = record("/work/vidtx/train.py", logging.ERROR, sys.exc_info())
  assert cli.quiet_orbax(failed) and failed.exc_info is None
  assert cli.quiet_orbax(ours) and ours.exc_info is not None
