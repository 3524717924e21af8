import json
import re

import pytest

from vidtx.weights import files


def test_hf_directory_config_is_read(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "vivit", "hidden_act": "gelu"}))
  assert files.load_hf_config(str(tmp_path)) == {"model_type": "vivit", "hidden_act": "gelu"}


def test_a_file_or_a_directory_without_config_has_none(tmp_path):
  weights_file = tmp_path / "model.safetensors"
  weights_file.write_bytes(b"")
  assert files.load_hf_config(str(weights_file)) is None
  assert files.load_hf_config(str(tmp_path)) is None


@pytest.mark.parametrize("text,error", [("{not json", "Expecting property name"),
                                        ("[1, 2]", "holds list, not the settings")])
def test_an_unreadable_config_is_named(tmp_path, text, error):
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json")) + f".*{error}"):
    files.load_hf_config(str(tmp_path))
