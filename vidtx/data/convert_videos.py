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
truncated files), "no_video_stream" or "zero_frames". A failure never stops the conversion.

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
import sys
import time

from absl import logging

from vidtx.data import records, video_files

FORMATS = ("kinetics", "ssv2", "folders", "csv")
STATE_DIR = ".convert"
LOG_EVERY_S = 10.0
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test",
                "testing": "test"}
_TRIMMED_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


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
    raise ValueError("--annotations is empty: give the annotation files, e.g. "
                     "--annotations=train.csv,val.csv")
  return out


def _split_from_file_name(path):
  words = re.split(r"[-_.\s]+", os.path.splitext(os.path.basename(path))[0].lower())
  found = {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
  if len(found) != 1:
    raise ValueError(f"Cannot tell the split of {path!r} from its name: write it as "
                     f"--annotations=<split>={path}")
  return found.pop()


def read_label_map(path):
  """Class names by index from a JSON list (labels.json), a JSON object name -> index (SSv2's
  labels file), or a text file with one name per line."""
  with open(path) as f:
    text = f.read()
  if not path.endswith(".json"):
    return [line.strip() for line in text.splitlines() if line.strip()]
  data = json.loads(text)
  if isinstance(data, list):
    return [str(name) for name in data]
  by_index = {int(index): name for name, index in data.items()}
  if sorted(by_index) != list(range(len(data))):
    raise ValueError(f"--labels={path!r}: the indices must be 0..{len(data) - 1}, each once")
  return [by_index[i] for i in range(len(data))]


def _class_names(seen, labels_path):
  """The label map: from --labels if given (every seen class must be in it), else sorted."""
  if not labels_path:
    return sorted(seen)
  names = read_label_map(labels_path)
  unknown = sorted(set(seen) - set(names))
  if unknown:
    raise ValueError(f"--labels={labels_path!r} has no class {unknown[0]!r} "
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
        raise ValueError(f"{path!r} is not a Kinetics CSV: need the columns {sorted(need)}, "
                         f"found {reader.fieldnames}")
      for row in reader:
        split_dir = row.get("split") or split or _split_from_file_name(path)
        if not row["label"]:
          raise ValueError(f"{path!r}, youtube_id {row['youtube_id']}: no label (a test CSV "
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
    raise ValueError("--format=ssv2 needs --labels=<the labels JSON, template -> index>")
  names = read_label_map(labels_path)
  index = {name: i for i, name in enumerate(names)}
  files = _index_videos(root)
  videos = collections.defaultdict(list)
  for split, path in _annotation_files(annotations):
    split = split or _split_from_file_name(path)
    with open(path) as f:
      entries = json.load(f)
    for entry in entries:
      vid = str(entry["id"])
      if "template" not in entry:
        raise ValueError(f"{path!r}: video {vid} has no 'template' (the test list has no "
                         "labels: convert the train and validation lists)")
      name = entry["template"].replace("[", "").replace("]", "")
      if name not in index:
        raise ValueError(f"{path!r}: video {vid} has the template {name!r}, which is not in "
                         f"--labels={labels_path!r}")
      video_path = (files.get(vid) or [os.path.join(root, vid + ".webm")])[0]
      videos[split].append(_video(root, video_path, index[name], name))
  return videos, names


def _folders(root, labels_path):
  found = []  # (split, class name, path)
  skipped = []
  for split_dir in sorted(os.listdir(root)):
    split_path = os.path.join(root, split_dir)
    if not os.path.isdir(split_path) or split_dir.startswith("."):
      continue
    for class_name in sorted(os.listdir(split_path)):
      class_path = os.path.join(split_path, class_name)
      if not os.path.isdir(class_path):
        continue
      for name in sorted(os.listdir(class_path)):
        path = os.path.join(class_path, name)
        is_video = os.path.splitext(name)[1].lower() in video_files.VIDEO_EXTENSIONS
        if is_video and not name.startswith("."):
          found.append((split_name(split_dir), class_name, path))
        elif not name.startswith("."):
          skipped.append(path)
  if skipped:
    logging.warning("Ignored %d files that are not videos (%s), e.g. %s", len(skipped),
                    "/".join(video_files.VIDEO_EXTENSIONS), skipped[0])
  if not found:
    raise ValueError(f"--video_root={root!r} has no videos in <split>/<class>/ folders")
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
          raise ValueError(f"{path}:{number}: expected 'path,label', got {line!r}")
        video_path, label = (x.strip() for x in fields)
        if number == 1 and (video_path.lower(), label.lower()) == ("path", "label"):
          continue
        rows.append((split, os.path.join(root, video_path), label))
  numeric = [label.isdigit() for _, _, label in rows]
  if any(numeric) and not all(numeric):
    raise ValueError("--annotations: the labels mix integers and class names; use one kind")
  if rows and all(numeric):
    indices = [int(label) for _, _, label in rows]
    names = (read_label_map(labels_path) if labels_path
             else [str(i) for i in range(max(indices) + 1)])
    if max(indices) >= len(names):
      raise ValueError(f"label {max(indices)} is out of range of --labels={labels_path!r} "
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
      raise ValueError("--format=folders reads the splits and classes from the folders: drop "
                       "--annotations")
    return _folders(video_root, labels)
  if format == "csv":
    return _csv(video_root, annotations, labels)
  raise ValueError(f"--format={format!r}: choose one of {FORMATS}")


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
        progress(False)
        continue
      context = {records.SOURCE_KEY: video.source}
      if rate:
        context[records.FRAME_RATE_KEY] = rate
      progress(True)
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
  """Logs videos done / total, videos/s, ETA and failures, at most every LOG_EVERY_S."""

  def __init__(self, total):
    self.total, self.done, self.failed = total, 0, 0
    self.start = self.last_log = time.monotonic()

  def __call__(self, ok):
    self.done += 1
    self.failed += not ok
    if time.monotonic() - self.last_log >= LOG_EVERY_S:
      self.log()

  def log(self):
    self.last_log = now = time.monotonic()
    rate = self.done / max(now - self.start, 1e-9)
    eta = (self.total - self.done) / rate if rate else math.inf
    logging.info("Converted %d/%d videos (%.1f videos/s, ETA %s), %d failed so far", self.done,
                 self.total, rate, "?" if eta == math.inf else f"{eta / 60:.1f} min",
                 self.failed)


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
      raise ValueError(f"--{flag}={value!r}: must be at least {low}")
  if not 1 <= jpeg_quality <= 100:
    raise ValueError(f"--jpeg_quality={jpeg_quality!r}: must be in 1..100 (default 90)")
  videos, names = list_videos(format, video_root, annotations, labels)
  if splits:
    missing = sorted(set(splits) - set(videos))
    if missing:
      raise ValueError(f"--splits: no videos of split {missing[0]!r}; the annotations have "
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
    logging.info("%s: %d records in %d shards; %d videos failed %s (see %s_failures.csv)", split,
                 metadata["splits"][split], len(mine), len(failures), dict(reasons), split)
  _write_json(os.path.join(output_dir, records.LABELS), names)
  # metadata.json marks a finished conversion, so it goes last.
  _write_json(os.path.join(output_dir, records.METADATA), metadata)
  return dict(splits=metadata["splits"], failures=metadata["failures"],
              shards_written=len(todo), shards_skipped=len(shards) - len(todo))


if __name__ == "__main__":
  from absl import app, flags

  _FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Annotation format (module docstring).")
  _VIDEO_ROOT = flags.DEFINE_string("video_root", None, "Directory holding the videos.")
  _OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the shards go.")
  _ANNOTATIONS = flags.DEFINE_list(
      "annotations", [], "Annotation files, each `path` or `<split>=path` (not for folders).")
  _LABELS = flags.DEFINE_string(
      "labels", "", "Label map: JSON list, JSON object name -> index, or one name per line. "
      "Required for ssv2; otherwise the sorted class names.")
  _SPLITS = flags.DEFINE_list("splits", [], "Convert only these splits (default: all).")
  _SHORT_SIDE = flags.DEFINE_integer(
      "short_side", 256, "Resize the short side to this (never upscaled); 0 keeps the size.")
  _FPS = flags.DEFINE_float("fps", 0.0, "Resample to this frame rate; 0 keeps the source's.")
  _JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the frames, 1..100.")
  _EXAMPLES_PER_SHARD = flags.DEFINE_integer("examples_per_shard", 256, "Videos per shard.")
  _WORKERS = flags.DEFINE_integer("workers", 0, "Worker processes; 0: one per core.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the order of the videos in the shards.")
  flags.mark_flags_as_required(["format", "video_root", "output_dir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      convert(_OUTPUT_DIR.value, format=_FORMAT.value, video_root=_VIDEO_ROOT.value,
              annotations=_ANNOTATIONS.value, labels=_LABELS.value, splits=_SPLITS.value,
              short_side=_SHORT_SIDE.value, fps=_FPS.value, jpeg_quality=_JPEG_QUALITY.value,
              examples_per_shard=_EXAMPLES_PER_SHARD.value, workers=_WORKERS.value,
              seed=_SEED.value)
    except (ValueError, FileNotFoundError) as e:  # bad flags or annotations: the message says
      logging.error("%s", e)
      sys.exit(f"error: {e}")

  app.run(main)
