"""Converts video files into the DMVR TFRecord shards of vidtx.data.records.

  python -m vidtx.data.convert_videos --format=<format> --video_root=<videos> \\
      [--annotations=<files>] [--labels=<file>] --output_dir=<shards>

Formats (`--annotations` takes a comma-separated list of files; each split's name comes from the
file, or write `<split>=<file>`):

  kinetics  The official CSVs, `label,youtube_id,time_start,time_end,split`; the split column
            names the split. Videos anywhere under --video_root, as the CVDF download lays them
            out (`train/<id>_<start:06d>_<end:06d>.mp4`, or one folder per class); a copy in a
            `replacement*` folder (CVDF's fixes of corrupted files) wins over the original.
              python -m vidtx.data.convert_videos --format=kinetics --video_root=k400 \\
                  --annotations=k400/annotations/train.csv,k400/annotations/val.csv \\
                  --output_dir=/data/k400_tfrecords
            Full YouTube videos named `<id>.<ext>` also work: the time window is cut out of a
            file that is more than 1 s longer than the window; a shorter file, or one named
            `<id>_<start>_<end>`, is taken as the trimmed clip and used whole.
  ssv2      Something-Something v2: --labels is the labels JSON (template -> index, the official
            indices), the annotations the train/validation JSON lists (`id`, `template`; the
            "[something]" brackets are dropped before the lookup). Videos `<id>.webm`.
              python -m vidtx.data.convert_videos --format=ssv2 --video_root=ssv2/videos \\
                  --labels=ssv2/labels/labels.json \\
                  --annotations=ssv2/labels/train.json,ssv2/labels/validation.json \\
                  --output_dir=/data/ssv2_tfrecords
  folders   One folder per split and one per class: <video_root>/<split>/<class>/<video>.
            Video files above the class folders are ignored, with a warning.
              python -m vidtx.data.convert_videos --format=folders --video_root=my_videos \\
                  --output_dir=/data/my_tfrecords
  csv       Lines `path,label` (or `path label`; an optional `path,label` header); paths are
            relative to --video_root; the labels are all class names or all integer indices.
              python -m vidtx.data.convert_videos --format=csv --video_root=clips \\
                  --annotations=train=train.csv,validation=val.csv --output_dir=/data/clips

Split names: "val" is written as "validation" (the eval split our configs use), so Kinetics'
val.csv gives validation-*-of-*.tfrecord. Labels: indices follow --labels when given (a JSON
list, a JSON object name -> index, or one name per line); otherwise the sorted class names
(kinetics, folders, csv) or SSv2's official indices.

Frames: every frame at the source rate, or resampled to --fps; the short side resized to
--short_side, never upscaled; JPEG quality --jpeg_quality (vidtx.data.video_files reads them).
Each record also stores its source path ("clip/source") and frame rate ("clip/frame_rate").

Output in --output_dir: <split>-<k>-of-<n>.tfrecord shards of --examples_per_shard videos (the
videos of a split are shuffled with --seed first, so shards mix the classes); labels.json (JSON
list of class names, index = label); metadata.json (record counts, read by the training
pipeline; written last, so it marks a finished conversion); <split>_failures.csv (path, reason,
detail) of every video that could not be used, with reason "missing", "corrupt" (includes
truncated files), "no_video_stream" or "zero_frames"; each is also logged as a warning. A failure
never stops the conversion.

Restarting: each shard is written by one worker under a temporary name and renamed when
complete; its record count and failures go to .convert/<shard>.json. The assignment of videos
to shards is a function of the annotations and --seed, so a re-run skips every finished shard
whose videos and settings are unchanged and only converts the rest. Use one converter per
output directory at a time. Check the result with `python -m vidtx.data.check`.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
import socket
import time

from absl import app, flags, logging

from vidtx import cli, errors
from vidtx.data import records, video_files

FORMATS = ("kinetics", "ssv2", "folders", "csv")
STATE_DIR = ".convert"
LOG_EVERY_S = 10.0
# Videos done before the progress log shows an ETA: the first ones also pay for starting the
# workers, so an ETA from them alone is far too long.
ETA_AFTER_VIDEOS = 20
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test",
                "testing": "test"}
_TRIMMED_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


class ConversionError(errors.FlagError):
  """The videos cannot be converted as the flags and the annotation files they name ask; the
  message names the flag or file and the fix."""


@dataclasses.dataclass(frozen=True)
class Video:
  path: str  # absolute; a missing file is reported, not raised
  label: int
  label_name: str
  source: str  # path relative to the video root, stored in the record
  window: tuple[float, float] | None = None  # (start, end) seconds to cut from a full video


# ---------------------------------------------------------------------------------------------
# Annotations: every format gives {split: [Video]} and the class names (index = label).


def split_name(name):
  """Our name for a split: "val" becomes "validation", the eval split the configs use."""
  return _SPLIT_WORDS.get(name.lower(), name)


def _annotation_files(annotations):
  """[(split or None, path)] from entries "path" or "split=path"."""
  out = []
  for entry in annotations:
    split, sep, path = entry.partition("=")
    if not sep:
      split, path = None, entry
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--annotations: {path!r} does not exist")
    out.append((split_name(split) if split else None, path))
  if not out:
    raise ConversionError("--annotations is empty: give the annotation files, e.g. "
                          "--annotations=train.csv,val.csv")
  return out


def _split_from_file_name(path):
  words = re.split(r"[-_.\s]+", os.path.splitext(os.path.basename(path))[0].lower())
  found = {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
  if len(found) != 1:
    raise ConversionError(f"Cannot tell the split of {path!r} from its name: write it as "
                          f"--annotations=<split>={path}")
  return found.pop()


def _json(text, where):
  try:
    return json.loads(text)
  except ValueError as e:
    raise ConversionError(f"{where} is not valid JSON ({e})") from None


def read_label_map(path):
  """Class names by index from a JSON list (labels.json), a JSON object name -> index (SSv2's
  labels file), or a text file with one name per line."""
  with open(path) as f:
    text = f.read()
  if not path.endswith(".json"):
    return [line.strip() for line in text.splitlines() if line.strip()]
  data = _json(text, f"--labels={path!r}")
  if isinstance(data, list):
    return [str(name) for name in data]
  by_index = {int(index): name for name, index in data.items()}
  if sorted(by_index) != list(range(len(data))):
    raise ConversionError(f"--labels={path!r}: the indices must be 0..{len(data) - 1}, each once")
  return [by_index[i] for i in range(len(data))]


def _class_names(seen, labels_path):
  """The label map: from --labels if given (every seen class must be in it), else sorted."""
  if not labels_path:
    return sorted(seen)
  names = read_label_map(labels_path)
  unknown = sorted(set(seen) - set(names))
  if unknown:
    raise ConversionError(f"--labels={labels_path!r} has no class {unknown[0]!r} "
                          f"({len(unknown)} classes of the annotations are missing from it)")
  return names


def _index_videos(root):
  """Every video file under `root`, by file name without extension (sorted paths)."""
  index = collections.defaultdict(list)
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in video_files.VIDEO_EXTENSIONS and not name.startswith("."):
        index[stem].append(os.path.join(directory, name))
  return index


def _video(root, path, label, label_name, window=None):
  return Video(os.path.abspath(path), label, label_name, os.path.relpath(path, root), window)


def _kinetics(root, annotations, labels_path):
  by_id = collections.defaultdict(list)  # youtube id -> [(path, (start, end) or None)]
  for stem, paths in _index_videos(root).items():
    trimmed = _TRIMMED_NAME.match(stem)
    key, span = ((trimmed["id"], (int(trimmed["start"]), int(trimmed["end"]))) if trimmed
                 else (stem, None))
    by_id[key].extend((p, span) for p in paths)

  def rank(path, split_dir):  # CVDF's replacements first, then files under the split's folder
    parts = os.path.relpath(path, root).split(os.sep)
    return (not any(p.startswith("replacement") for p in parts[:-1]), parts[0] != split_dir, path)

  rows = []
  for split, path in _annotation_files(annotations):
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      need = {"label", "youtube_id", "time_start", "time_end"}
      if not need <= set(reader.fieldnames or ()):
        raise ConversionError(f"{path!r} is not a Kinetics CSV: need the columns {sorted(need)}, "
                              f"found {reader.fieldnames}")
      for row in reader:
        split_dir = row.get("split") or split or _split_from_file_name(path)
        if not row["label"]:
          raise ConversionError(f"{path!r}, youtube_id {row['youtube_id']}: no label (a test CSV "
                                "without labels cannot be converted for training)")
        rows.append((split_dir, row))
  names = _class_names({row["label"].strip() for _, row in rows}, labels_path)
  index = {name: i for i, name in enumerate(names)}
  videos = collections.defaultdict(list)
  for split_dir, row in rows:
    vid, label = row["youtube_id"], row["label"].strip()
    span = (float(row["time_start"]), float(row["time_end"]))
    trimmed_name = f"{vid}_{int(span[0]):06d}_{int(span[1]):06d}"
    # A trimmed file must be this clip's; a full video (no span in its name) holds every clip.
    found = sorted((rank(p, split_dir), p, s) for p, s in by_id.get(vid, ())
                   if s is None or s == (int(span[0]), int(span[1])))
    if found:
      _, path, file_span = found[0]
      window = None if file_span else span
    else:
      path, window = os.path.join(root, split_dir, trimmed_name + ".mp4"), None
    videos[split_name(split_dir)].append(_video(root, path, index[label], label, window))
  return videos, names


def _ssv2(root, annotations, labels_path):
  if not labels_path:
    raise ConversionError("--format=ssv2 needs --labels=<the labels JSON, template -> index>")
  names = read_label_map(labels_path)
  index = {name: i for i, name in enumerate(names)}
  files = _index_videos(root)
  videos = collections.defaultdict(list)
  for split, path in _annotation_files(annotations):
    split = split or _split_from_file_name(path)
    with open(path) as f:
      entries = _json(f.read(), f"--annotations: {path!r}")
    for entry in entries:
      vid = str(entry["id"])
      if "template" not in entry:
        raise ConversionError(f"{path!r}: video {vid} has no 'template' (the test list has no "
                              "labels: convert the train and validation lists)")
      name = entry["template"].replace("[", "").replace("]", "")
      if name not in index:
        raise ConversionError(f"{path!r}: video {vid} has the template {name!r}, which is not in "
                              f"--labels={labels_path!r}")
      video_path = (files.get(vid) or [os.path.join(root, vid + ".webm")])[0]
      videos[split].append(_video(root, video_path, index[name], name))
  return videos, names


def _is_video(name):
  return os.path.splitext(name)[1].lower() in video_files.VIDEO_EXTENSIONS and \
      not name.startswith(".")


def _folders(root, labels_path):
  found = []  # (split, class name, path)
  skipped = []
  # Videos above the class level (e.g. --video_root given as the train folder): not read.
  misplaced = [os.path.join(root, n) for n in sorted(os.listdir(root)) if _is_video(n)]
  for split_dir in sorted(os.listdir(root)):
    split_path = os.path.join(root, split_dir)
    if not os.path.isdir(split_path) or split_dir.startswith("."):
      continue
    for class_name in sorted(os.listdir(split_path)):
      class_path = os.path.join(split_path, class_name)
      if not os.path.isdir(class_path):
        if _is_video(class_name):
          misplaced.append(class_path)
        continue
      for name in sorted(os.listdir(class_path)):
        path = os.path.join(class_path, name)
        if _is_video(name):
          found.append((split_name(split_dir), class_name, path))
        elif not name.startswith("."):
          skipped.append(path)
  if misplaced:
    logging.warning("Ignored %d video files that are not in a class folder, e.g. %s: "
                    "--format=folders reads <video_root>/<split>/<class>/<video>", len(misplaced),
                    misplaced[0])
  if skipped:
    logging.warning("Ignored %d files that are not videos (%s), e.g. %s", len(skipped),
                    "/".join(video_files.VIDEO_EXTENSIONS), skipped[0])
  if not found:
    raise ConversionError(f"--video_root={root!r} has no videos in <split>/<class>/ folders")
  names = _class_names({c for _, c, _ in found}, labels_path)
  index = {name: i for i, name in enumerate(names)}
  videos = collections.defaultdict(list)
  for split, class_name, path in found:
    videos[split].append(_video(root, path, index[class_name], class_name))
  return videos, names


def _csv(root, annotations, labels_path):
  rows = []  # (split, path, label text)
  for split, path in _annotation_files(annotations):
    split = split or _split_from_file_name(path)
    with open(path) as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        if not line:
          continue
        fields = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
        if len(fields) != 2:
          raise ConversionError(f"{path}:{number}: expected 'path,label', got {line!r}")
        video_path, label = (x.strip() for x in fields)
        if number == 1 and (video_path.lower(), label.lower()) == ("path", "label"):
          continue
        rows.append((split, os.path.join(root, video_path), label))
  numeric = [label.isdigit() for _, _, label in rows]
  if any(numeric) and not all(numeric):
    raise ConversionError("--annotations: the labels mix integers and class names; use one kind")
  if rows and all(numeric):
    indices = [int(label) for _, _, label in rows]
    names = (read_label_map(labels_path) if labels_path
             else [str(i) for i in range(max(indices) + 1)])
    if max(indices) >= len(names):
      raise ConversionError(f"label {max(indices)} is out of range of --labels={labels_path!r} "
                            f"({len(names)} classes)")
  else:
    names = _class_names({label for _, _, label in rows}, labels_path)
    position = {name: i for i, name in enumerate(names)}
    indices = [position[label] for _, _, label in rows]
  videos = collections.defaultdict(list)
  for (split, path, _), label in zip(rows, indices):
    videos[split].append(_video(root, path, label, names[label]))
  return videos, names


def list_videos(format, video_root, annotations=(), labels=""):  # pylint: disable=redefined-builtin
  """({split: [Video]}, class names) described by the annotations of `format`."""
  if not os.path.isdir(video_root):
    raise FileNotFoundError(f"--video_root={video_root!r} is not a directory")
  if format == "kinetics":
    return _kinetics(video_root, annotations, labels)
  if format == "ssv2":
    return _ssv2(video_root, annotations, labels)
  if format == "folders":
    if annotations:
      raise ConversionError("--format=folders reads the splits and classes from the folders: drop "
                            "--annotations")
    return _folders(video_root, labels)
  if format == "csv":
    return _csv(video_root, annotations, labels)
  raise ConversionError(f"--format={format!r}: choose one of {FORMATS}")


# ---------------------------------------------------------------------------------------------
# Shards.


@dataclasses.dataclass(frozen=True)
class _Shard:
  split: str
  name: str
  videos: tuple[Video, ...]
  fingerprint: str  # of the videos and the settings: a finished shard is reused only if equal


def _plan_shards(videos, examples_per_shard, seed, settings):
  """Deterministic assignment: each split's videos shuffled with `seed`, then cut in order."""
  shards = []
  for split, items in sorted(videos.items()):
    order = sorted(items, key=lambda v: hashlib.sha256(f"{seed}:{v.source}:{v.window}".encode())
                   .hexdigest())
    count = math.ceil(len(order) / examples_per_shard)
    for k in range(count):
      chunk = tuple(order[k * examples_per_shard:(k + 1) * examples_per_shard])
      key = json.dumps([settings, [(v.source, v.label, v.label_name, v.window) for v in chunk]])
      shards.append(_Shard(split, records.shard_name(split, k, count), chunk,
                           hashlib.sha256(key.encode()).hexdigest()))
  return shards


def _state_path(output_dir, shard_name):
  return os.path.join(output_dir, STATE_DIR, shard_name + ".json")


def _write_json(path, value):
  tmp = os.path.join(os.path.dirname(path),
                     f".tmp-{socket.gethostname()}-{os.getpid()}-{os.path.basename(path)}")
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _finished_state(output_dir, shard):
  """The saved state of a finished shard with the same fingerprint, else None."""
  path = _state_path(output_dir, shard.name)
  if not (os.path.exists(path) and os.path.exists(os.path.join(output_dir, shard.name))):
    return None
  with open(path) as f:
    state = json.load(f)
  return state if state.get("fingerprint") == shard.fingerprint else None


def _convert_shard(output_dir, shard, settings, progress):
  """Writes one shard (temp name, then rename), then its state file. Returns the state."""
  failures = []

  def examples():
    for video in shard.videos:
      try:
        frames, rate = video_files.read_video(video.path, window=video.window, **settings)
      except video_files.VideoError as e:
        failures.append({"path": video.path, "reason": e.reason, "detail": e.detail})
        progress(f"{video.path}: {e} (skipped; listed in {shard.split}_failures.csv)")
        continue
      context = {records.SOURCE_KEY: video.source}
      if rate:
        context[records.FRAME_RATE_KEY] = rate
      progress(None)
      yield records.make_example(frames, video.label, video.label_name, context)

  count = records.write_records(os.path.join(output_dir, shard.name), examples())
  state = {"fingerprint": shard.fingerprint, "count": count, "failures": failures}
  _write_json(_state_path(output_dir, shard.name), state)
  return state


_worker_queue = None


def _init_worker(queue):
  global _worker_queue
  _worker_queue = queue


def _convert_shard_in_worker(output_dir, shard, settings):
  return _convert_shard(output_dir, shard, settings, _worker_queue.put)


class _Progress:
  """Called once per video with None, or for a video that failed the line that says why (logged
  at once); logs videos done / total, videos/s, failures and, after ETA_AFTER_VIDEOS, the ETA,
  at most every LOG_EVERY_S."""

  def __init__(self, total):
    self.total, self.done, self.failed = total, 0, 0
    self.start = self.last_log = time.monotonic()

  def __call__(self, failure):
    self.done += 1
    if failure is not None:
      self.failed += 1
      logging.warning("Cannot convert %s", failure)
    if time.monotonic() - self.last_log >= LOG_EVERY_S:
      self.log()

  def log(self):
    self.last_log = now = time.monotonic()
    rate = self.done / max(now - self.start, 1e-9)
    eta = ""
    if self.done >= ETA_AFTER_VIDEOS:
      eta = f", ETA {(self.total - self.done) / rate / 60:.1f} min"
    logging.info("Converted %d/%d videos (%.1f videos/s%s), %d failed so far", self.done,
                 self.total, rate, eta, self.failed)


def _run(output_dir, shards, settings, workers):
  """Converts `shards`; returns {shard name: state}."""
  progress = _Progress(sum(len(s.videos) for s in shards))
  states = {}
  if workers <= 1 or len(shards) <= 1:
    for shard in shards:
      states[shard.name] = _convert_shard(output_dir, shard, settings, progress)
  else:
    # Spawned, not forked: TF's threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with concurrent.futures.ProcessPoolExecutor(
        min(workers, len(shards)), mp_context=context, initializer=_init_worker,
        initargs=(queue,)) as pool:
      futures = {pool.submit(_convert_shard_in_worker, output_dir, s, settings): s.name
                 for s in shards}
      pending = set(futures)
      while pending:
        done, pending = concurrent.futures.wait(pending, timeout=1.0)
        while not queue.empty():  # progress only: the counts come from the states
          progress(queue.get())
        for future in done:
          states[futures[future]] = future.result()  # re-raises a worker's error
  return states


def _write_failures(path, failures):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path", "reason", "detail"])
    writer.writeheader()
    writer.writerows(failures)


def convert(output_dir, *, format, video_root, annotations=(), labels="", splits=(),  # pylint: disable=redefined-builtin
            short_side=256, fps=0.0, jpeg_quality=90, examples_per_shard=256, workers=0,
            seed=0):
  """Converts the videos of `format` into shards in `output_dir` (see the module docstring).

  `splits` restricts the conversion to these splits (our names, e.g. "validation"); workers=0
  uses every core, 1 converts in this process. Returns a summary: {"splits": {split: records},
  "failures": {split: count}, "shards_written": n, "shards_skipped": n}.
  """
  for flag, value, low in (("short_side", short_side, 0), ("fps", fps, 0),
                           ("examples_per_shard", examples_per_shard, 1), ("workers", workers, 0)):
    if value < low:
      raise ConversionError(f"--{flag}={value!r}: must be at least {low}")
  if not 1 <= jpeg_quality <= 100:
    raise ConversionError(f"--jpeg_quality={jpeg_quality!r}: must be in 1..100 (default 90)")
  videos, names = list_videos(format, video_root, annotations, labels)
  if splits:
    missing = sorted(set(splits) - set(videos))
    if missing:
      raise ConversionError(f"--splits: no videos of split {missing[0]!r}; the annotations have "
                            f"{sorted(videos)}")
    videos = {s: v for s, v in videos.items() if s in splits}
  settings = dict(short_side=int(short_side), fps=float(fps), jpeg_quality=int(jpeg_quality))
  shards = _plan_shards(videos, examples_per_shard, seed, settings)

  os.makedirs(os.path.join(output_dir, STATE_DIR), exist_ok=True)
  for leftover in glob.glob(os.path.join(output_dir, ".tmp-*")):  # from an interrupted run
    os.remove(leftover)
  for split in videos:
    keep = {s.name for s in shards if s.split == split}
    records.remove_stale_shards(output_dir, split, keep)
    for path in glob.glob(_state_path(output_dir, records.shard_pattern(split))):
      if os.path.basename(path)[:-len(".json")] not in keep:
        os.remove(path)
  states = {s.name: _finished_state(output_dir, s) for s in shards}
  todo = [s for s in shards if states[s.name] is None]
  logging.info("%d videos in %s; %d of %d shards already finished, converting %d videos.",
               sum(len(v) for v in videos.values()),
               ", ".join(f"{s}: {len(v)}" for s, v in sorted(videos.items())),
               len(shards) - len(todo), len(shards), sum(len(s.videos) for s in todo))
  states.update(_run(output_dir, todo, settings, workers or os.cpu_count() or 1))

  metadata = dict(format=format, num_classes=len(names), splits={}, shard_counts={},
                  failures={}, settings=settings)
  for split in sorted(videos):
    mine = [s for s in shards if s.split == split]
    failures = [f for s in mine for f in states[s.name]["failures"]]
    _write_failures(os.path.join(output_dir, f"{split}_failures.csv"), failures)
    metadata["shard_counts"][split] = {s.name: states[s.name]["count"] for s in mine}
    metadata["splits"][split] = sum(metadata["shard_counts"][split].values())
    metadata["failures"][split] = len(failures)
    reasons = collections.Counter(f["reason"] for f in failures)
    logging.info("%s: %d records in %d shards; %d videos failed %s (see %s)", split,
                 metadata["splits"][split], len(mine), len(failures), dict(reasons),
                 os.path.join(output_dir, f"{split}_failures.csv"))
  _write_json(os.path.join(output_dir, records.LABELS), names)
  # metadata.json marks a finished conversion, so it goes last.
  _write_json(os.path.join(output_dir, records.METADATA), metadata)
  return dict(splits=metadata["splits"], failures=metadata["failures"],
              shards_written=len(todo), shards_skipped=len(shards) - len(todo))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined only when run as a program, so importing the converter defines no flags."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum("format", None, FORMATS, "Annotation format (module docstring).", **fv)
  flags.DEFINE_string("video_root", None, "Directory holding the videos.", **fv)
  flags.DEFINE_string("output_dir", None, "Where the shards go.", **fv)
  flags.DEFINE_list("annotations", [], "Annotation files, each `path` or `<split>=path` (not for "
                    "folders).", **fv)
  flags.DEFINE_string("labels", "", "Label map: JSON list, JSON object name -> index, or one "
                      "name per line. Required for ssv2; otherwise the sorted class names.", **fv)
  flags.DEFINE_list("splits", [], "Convert only these splits (default: all).", **fv)
  flags.DEFINE_integer("short_side", 256, "Resize the short side to this (never upscaled); 0 "
                       "keeps the size.", **fv)
  flags.DEFINE_float("fps", 0.0, "Resample to this frame rate; 0 keeps the source's.", **fv)
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the frames, 1..100.", **fv)
  flags.DEFINE_integer("examples_per_shard", 256, "Videos per shard.", **fv)
  flags.DEFINE_integer("workers", 0, "Worker processes; 0: one per core.", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the order of the videos in the shards.", **fv)
  flags.mark_flags_as_required(["format", "video_root", "output_dir"], **fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  # The paths first: a typo fails at once, not after the videos have been listed.
  cli.check_readable("video_root", f.video_root)
  if f.labels:
    cli.check_readable("labels", f.labels)
  cli.check_writable("output_dir", f.output_dir)
  convert(f.output_dir, format=f.format, video_root=f.video_root, annotations=f.annotations,
          labels=f.labels, splits=f.splits, short_side=f.short_side, fps=f.fps,
          jpeg_quality=f.jpeg_quality, examples_per_shard=f.examples_per_shard,
          workers=f.workers, seed=f.seed)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
