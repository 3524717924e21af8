"""Tests of reading video files (vidtx.data.video_files): frames, sizes, rates, time windows
and the reasons a file cannot be read.

Videos are made here with PyAV: 48x64 frames of a gradient with a moving square, so every frame
differs and a decoded frame tells which source frame it came from. The converter's tests
(test_convert_videos.py) make their videos with these helpers.
"""

import os

import av
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vidtx.data import video_files

HEIGHT, WIDTH = 48, 64
SHORT_SIDE = 32
STORED = (32, 43)  # 48x64 with the short side at 32 (64 * 32 / 48 = 42.7 -> 43)


def source_frames(num_frames, seed):
  """uint8 [T, 48, 64, 3]: a smooth background and a square moving 3 px per frame."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
  background = (rng.uniform(60, 180, 3) + 40 * np.sin(x / 9 + seed)[..., None]
                + 30 * np.cos(y / 7)[..., None])
  frames = np.repeat(background[None], num_frames, axis=0)
  for i in range(num_frames):
    step = 3 * i + seed  # moves right, and down a row at the right edge: never repeats
    top, left = (8 + 5 * seed + 7 * (step // 48)) % (HEIGHT - 16), step % (WIDTH - 16)
    frames[i, top:top + 16, left:left + 16] = (250, 240, 20)
  return frames.clip(0, 255).astype(np.uint8)


def write_video(path, frames, codec, fps=25):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return frames


def write_zero_frame_video(path):
  """An AVI with a video stream and no frames."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    container.start_encoding()


def write_audio_only(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w", format="mp4") as container:
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate = 16000
    container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_garbage(path, size=5000):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def resized(frames, size=STORED):
  return np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.BILINEAR))
                   for f in frames]).astype(np.float32)


def nearest_sources(jpegs, source):
  """For each stored JPEG frame: (index of the closest source frame, its mean abs error)."""
  decoded = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs]).astype(np.float32)
  errors = np.abs(decoded[:, None] - resized(source, decoded.shape[1:3])[None]).mean(
      axis=(2, 3, 4))
  return errors.argmin(axis=1).tolist(), errors.min(axis=1)


def test_encoders_exist():
  """The PyAV wheel carries the encoders the tests use (H.264, VP9, MPEG-4 Part 2)."""
  assert {"libx264", "libvpx-vp9", "mpeg4", "aac"} <= av.codecs_available


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx-vp9")])
def test_read_video_frames_size_and_rate(tmp_path, name, codec):
  source = write_video(tmp_path / name, source_frames(20, seed=1), codec)
  path = str(tmp_path / name)
  frames, rate = video_files.read_video(path, short_side=SHORT_SIDE)
  assert rate == 25.0 and len(frames) == 20
  assert tf.io.decode_jpeg(frames[0]).shape == (*STORED, 3)
  indices, errors = nearest_sources(frames, source)
  assert indices == list(range(20)) and errors.max() < 8

  # 10 fps out of 25: the frame on screen at k / 10 s for k / 10 < 0.8 s is frame floor(2.5 k).
  frames, rate = video_files.read_video(path, short_side=SHORT_SIDE, fps=10)
  assert rate == 10.0
  assert nearest_sources(frames, source)[0] == [0, 2, 5, 7, 10, 12, 15, 17]
  # 50 fps: every frame twice.
  frames, _ = video_files.read_video(path, short_side=SHORT_SIDE, fps=50)
  assert nearest_sources(frames, source)[0] == [i // 2 for i in range(40)]

  # Never upscaled: a short side of 48 stays 48.
  frames, _ = video_files.read_video(path, short_side=64)
  assert tf.io.decode_jpeg(frames[0]).shape == (HEIGHT, WIDTH, 3)


def test_time_window_is_cut_from_a_full_video_only(tmp_path):
  source = write_video(tmp_path / "full.mp4", source_frames(40, seed=2), "libx264", fps=10)
  path = str(tmp_path / "full.mp4")
  frames, _ = video_files.read_video(path, short_side=SHORT_SIDE, window=(1.0, 3.0))
  assert nearest_sources(frames, source)[0] == list(range(10, 30))
  frames, _ = video_files.read_video(path, short_side=SHORT_SIDE, fps=5, window=(1.0, 3.0))
  assert nearest_sources(frames, source)[0] == [10, 12, 14, 16, 18, 20, 22, 24, 26, 28]
  # The 4 s file is not more than 1 s longer than a 3.5 s window: it is the trimmed clip.
  frames, _ = video_files.read_video(path, short_side=SHORT_SIDE, window=(10.0, 13.5))
  assert len(frames) == 40
  with pytest.raises(video_files.VideoError, match="zero_frames.*window 5-5.5 s"):
    video_files.read_video(path, window=(5.0, 5.5))


def test_unreadable_videos_name_the_reason(tmp_path):
  write_video(tmp_path / "good.mp4", source_frames(20, seed=0), "libx264")
  with open(tmp_path / "good.mp4", "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.mp4", "wb") as f:
    f.write(data[:len(data) // 2])  # the index (moov) is at the end: gone
  write_video(tmp_path / "good.webm", source_frames(20, seed=0), "libvpx-vp9")
  with open(tmp_path / "good.webm", "rb") as f:
    data = f.read()
  with open(tmp_path / "truncated.webm", "wb") as f:
    f.write(data[:len(data) // 2])  # decodes, but stops early
  write_garbage(str(tmp_path / "garbage.mp4"))
  write_zero_frame_video(tmp_path / "empty.avi")
  write_audio_only(tmp_path / "audio.mp4")
  want = {"missing.mp4": "missing", "truncated.mp4": "corrupt", "truncated.webm": "corrupt",
          "garbage.mp4": "corrupt", "empty.avi": "zero_frames", "audio.mp4": "no_video_stream"}
  for name, reason in want.items():
    with pytest.raises(video_files.VideoError) as info:
      video_files.read_video(str(tmp_path / name))
    assert info.value.reason == reason, (name, info.value)
  with pytest.raises(video_files.VideoError, match="truncated: frames stop at 0.[0-4]"):
    video_files.read_video(str(tmp_path / "truncated.webm"))
