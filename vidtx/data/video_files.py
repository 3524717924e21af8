"""Reading encoded video files (mp4, webm, mkv, avi, ...) with PyAV into the JPEG frames that
DMVR records store (vidtx.data.records).

`read_video` keeps every frame at the source rate, or resamples to `fps` (the frame shown at each
time k / fps; repeated frames when upsampling). It resizes the short side to `short_side`
(bilinear, aspect kept) but never upscales: upscaling adds bytes, not detail, and training
resizes to config.data.min_resize anyway. A file it cannot use raises VideoError naming the
reason: missing, corrupt (includes truncated files), no_video_stream or zero_frames.

Shared by the converter (vidtx.data.convert_videos), vidtx.predict and the visualisers, so a
video file given to a trained model is stored as its training videos were.
"""

import math
import os

import av

from vidtx.data import records

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
# A video that decodes to less than this fraction of the duration its container announces is
# truncated (a download cut short). Not 1.0: containers round, and audio may outlast the video.
TRUNCATED_FRACTION = 0.9
# A Kinetics file longer than its time window by more than this is a full video to cut.
UNTRIMMED_SLACK_S = 1.0


class VideoError(Exception):
  """A video that cannot be converted; `reason` is missing / corrupt / no_video_stream /
  zero_frames."""

  def __init__(self, reason, detail):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def read_video(path, *, short_side=256, fps=0.0, jpeg_quality=90, window=None):
  """Decodes a video file into JPEG frames. Returns (frames: list of bytes, frame rate or 0).

  `window` (start, end) in seconds is cut out only if the file is more than UNTRIMMED_SLACK_S
  longer than it (otherwise the file is the trimmed clip). Raises VideoError.
  """
  if not os.path.isfile(path):
    raise VideoError("missing", "no such file")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoError("no_video_stream", f"the file's streams are: {', '.join(kinds)}")
      return _read_frames(container, container.streams.video[0], short_side=short_side,
                          fps=fps, jpeg_quality=jpeg_quality, window=window)
  except av.FFmpegError as e:
    raise VideoError("corrupt", str(e)) from None


def _duration_s(container, stream):
  if stream.duration:
    return float(stream.duration * stream.time_base)
  if container.duration:
    return container.duration / av.time_base
  return None


def _output_size(height, width, short_side):
  """(height, width) with the short side at `short_side` (never larger than the source), rounded
  as transforms.resize_short_side rounds."""
  short = min(height, width)
  if not short_side or short <= short_side:
    return height, width
  return ((height * short_side + short // 2) // short, (width * short_side + short // 2) // short)


def _read_frames(container, stream, *, short_side, fps, jpeg_quality, window):
  source_rate = float(stream.average_rate or stream.guessed_rate or 0)
  duration = _duration_s(container, stream)
  offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
  start, end = 0.0, math.inf
  if window and duration and duration > window[1] - window[0] + UNTRIMMED_SLACK_S:
    start, end = window
    # Lands on the keyframe at or before `start`; earlier frames are skipped below.
    container.seek(round((offset + start) / stream.time_base), stream=stream)

  def timed_frames():
    for i, frame in enumerate(container.decode(stream)):
      if frame.time is not None:
        yield frame.time - offset, frame
      elif source_rate:
        yield i / source_rate, frame
      else:
        raise VideoError("corrupt", "frames without timestamps in a stream without a rate")

  size = None
  last_encoded = (None, b"")

  def encode(frame):
    nonlocal size, last_encoded
    if last_encoded[0] is not frame:  # a frame repeated by upsampling is encoded once
      if size is None:
        size = _output_size(frame.height, frame.width, short_side)
      rgb = frame.to_ndarray(format="rgb24", height=size[0], width=size[1],
                             interpolation="BILINEAR")
      last_encoded = (frame, records.encode_jpeg(rgb, jpeg_quality))
    return last_encoded[1]

  frames, last_time = [], None
  for t, frame in _select_frames(timed_frames(), start=start, end=end, fps=fps,
                                 frame_duration=1 / source_rate if source_rate else 0.0):
    if frame is None:  # end-of-stream marker carrying the last decoded time
      last_time = t
    else:
      frames.append(encode(frame))
  cut = f" in the window {start:g}-{end:g} s" if end < math.inf else ""
  if not frames:
    raise VideoError("zero_frames", f"no frames decoded{cut}")
  expected_end = min(end, duration) if duration else None
  if expected_end and last_time - start < TRUNCATED_FRACTION * (expected_end - start):
    raise VideoError("corrupt", f"truncated: frames stop at {last_time:.2f} s "
                     f"but the container announces {expected_end:.2f} s{cut}")
  return frames, float(fps) if fps else source_rate


def _select_frames(timed, *, start, end, fps, frame_duration):
  """From (time, frame) in display order, yields (time, frame) of the frames to keep: all in
  [start, end), or with fps > 0 the frame on screen at each time start + k / fps. Ends with
  (end time of the last decoded frame, None)."""
  eps = 1e-6
  slot, shown, last = 0, None, None  # next output slot, the frame on screen, its time
  for t, frame in timed:
    if t >= end - eps:
      break
    if fps:
      while shown is not None and start + slot / fps < t - eps:
        yield start + slot / fps, shown
        slot += 1
      shown = frame
    elif t >= start - eps:
      yield t, frame
    last = t
  if last is None:
    yield 0.0, None
    return
  stop = min(end, last + frame_duration)
  while fps and shown is not None and start + slot / fps < stop - eps:
    yield start + slot / fps, shown
    slot += 1
  yield stop, None
