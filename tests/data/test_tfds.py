"""TFDS video datasets ("tfds:<name>") through the same samplers, transforms and batching."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vidtx import configuration, data, errors
from vidtx.data import clips, pipeline, records, tfds_datasets

NAME = "vidtx_test_videos"


class VidtxTestVideos(tfds.core.GeneratorBasedBuilder):
  """Random videos of 5-10 frames, 24x32, three classes; registered as "vidtx_test_videos"."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Video((None, 24, 32, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(8, 0), "validation": self._generate_examples(3, 1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      yield i, {"video": rng.integers(0, 256, (5 + i % 6, 24, 32, 3), dtype=np.uint8),
                "label": i % 3}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  # Two files per split, so two hosts can each read their own.
  VidtxTestVideos(data_dir=path).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=2))
  return path


def config(data_dir, **data_overrides):
  c = configuration.base()
  c.data.update({"name": f"tfds:{NAME}", "data_dir": data_dir, "num_classes": 3,
                 "num_frames": 4, "min_resize": 24, "crop_size": 16, "flip": "swap_labels",
                 "eval_clips": 2, "eval_crops": 3, **data_overrides})
  configuration.validate(c, num_devices=1, num_processes=1)
  return c


def data_config(data_dir, **overrides):
  return config(data_dir, **overrides).data


def test_train_and_multi_view_eval_batches(tfds_dir):
  cfg = data_config(tfds_dir)
  assert data.prepare(cfg, "") == tfds_dir
  assert data.num_examples(cfg, "train", tfds_dir) == 8
  batches = data.build(cfg, "train", train=True, batch_size=4, seed=0)
  for _ in range(3):  # more than one epoch of 2 batches
    batch = next(batches)
    assert batch["video"].shape == (4, 4, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert set(batch["label"]) <= {0, 1, 2}
  assert batches.skipped == 0
  evals = list(data.build(cfg, "validation", train=False, batch_size=2, seed=0))
  assert [b["video"].shape for b in evals] == [(2, 6, 4, 16, 16, 3)] * 2
  assert sorted(np.concatenate([b["label"][b["mask"] > 0] for b in evals])) == [0, 1, 2]


def test_a_tfds_record_gives_the_clip_its_frames_give_as_a_dmvr_record(tfds_dir):
  cfg = data_config(tfds_dir, randaugment_layers=2, random_erasing=0.5)
  path = tfds_datasets.split_files(cfg, tfds_dir, "train")[0]
  record = next(iter(tf.data.TFRecordDataset(path)))
  frames, label = tfds_datasets.record_parser(cfg)(record)
  as_dmvr = records.make_example(frames.numpy().tolist(), int(label)).SerializeToString()
  dmvr_cfg = data_config(tfds_dir, randaugment_layers=2, random_erasing=0.5)
  dmvr_cfg.name = "custom"
  key = tf.constant([3, 4], tf.int64)
  ours = clips.train_example(cfg, record, key)
  theirs = clips.train_example(dmvr_cfg, as_dmvr, key)
  np.testing.assert_array_equal(ours[0], theirs[0])
  assert int(ours[1][0]) == int(label)
  np.testing.assert_array_equal(clips.eval_example(cfg, record)[0],
                                clips.eval_example(dmvr_cfg, as_dmvr)[0])


def test_hosts_read_disjoint_parts_that_together_are_the_split(tfds_dir):
  cfg = data_config(tfds_dir, eval_clips=1, eval_crops=1)
  train = data.build(cfg, "train", train=True, batch_size=4, seed=0, process_index=1,
                     process_count=2)
  assert next(train)["video"].shape == (4, 4, 16, 16, 3)

  def clips(**host):  # "train" read once, in order, as evaluation reads
    batches = data.build(cfg, "train", train=False, batch_size=3, seed=0, **host)
    return [v.tobytes() for b in batches for v, m in zip(b["video"], b["mask"]) if m]
  hosts = [clips(process_index=i, process_count=2) for i in range(2)]
  assert [len(h) for h in hosts] == [4, 4] and not set(hosts[0]) & set(hosts[1])
  assert sorted(hosts[0] + hosts[1]) == sorted(clips())


def test_predict_reads_video_files_and_class_names_for_a_tfds_run(tfds_dir, tmp_path):
  from test_predict import write_mp4
  from vidtx import predict
  write_mp4(tmp_path / "clip.mp4", seed=0)
  path = str(tmp_path / "clip.mp4")
  views = predict.file_views(config(tfds_dir), predict.DEFAULT_CONVERSION, path)
  assert views.shape == (6, 4, 16, 16, 3)
  np.testing.assert_array_equal(views, predict.file_views(
      config(tfds_dir, name="custom"), predict.DEFAULT_CONVERSION, path))
  assert predict.class_names(config(tfds_dir), "") == ["a", "b", "c"]
  assert predict.class_names(config(str(tmp_path)), "") is None  # not prepared there


def test_missing_datasets_splits_and_wrong_class_counts_are_clear_errors(tfds_dir, tmp_path):
  from vidtx.data import check
  with pytest.raises(check.CheckError, match="checks DMVR shards"):
    check.check(data_config(tfds_dir))
  with pytest.raises(errors.DataNotFoundError, match="not prepared.*tfds build"):
    data.prepare(data_config(str(tmp_path)), "")
  with pytest.raises(errors.DataNotFoundError, match="tfds:vidtx_no_such_videos"):
    data.prepare(data_config(tfds_dir, name="tfds:vidtx_no_such_videos"), "")
  with pytest.raises(errors.DataNotFoundError, match="no split 'test'"):
    data.prepare(data_config(tfds_dir, eval_split="test"), "")
  with pytest.raises(errors.ConfigError, match="num_classes=5: the dataset's TFDS label feature "
                     "names 3 classes: set --config.data.num_classes=3"):
    data.prepare(data_config(tfds_dir, num_classes=5), "")
  assert pipeline.check_num_classes(data_config(tfds_dir), tfds_dir) == ["a", "b", "c"]
  with pytest.raises(errors.ConfigError, match="'clip' is not a ClassLabel"):
    data.prepare(data_config(tfds_dir, tfds_features=("video", "clip")), "")
  with pytest.raises(errors.ConfigError, match="'label' is not a Video.*'video': 'Video'"):
    data.prepare(data_config(tfds_dir, tfds_features=("label", "label")), "")
