"""The Colab notebooks run top to bottom (with tiny settings injected after their parameters)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from test_train import ROOT

# Per notebook: code run right after its "parameters" cell, so the whole notebook takes seconds.
TINY = {
    "quickstart": 'STEPS = 12\nWORKDIR = "{tmp}/run"\n'
                  'import vidtx.configuration as _c\n_load = _c.load\n'
                  '_c.load = lambda spec: _tiny(_load(spec))\n',
    "masked_video_modeling": 'STEPS = 6\nWORKDIR = "{tmp}/run"\n'
                             'import vidtx.configuration as _c\n_load = _c.load\n'
                             '_c.load = lambda spec: _tiny(_load(spec))\n',
    "fine_tune_your_videos": 'VIDEO_DIR = "{tmp}/videos"\nDATA_DIR = "{tmp}/converted"\n'
                             'WORKDIR = "{tmp}/run"\nSTEPS = 6\nTOY_VIDEOS_PER_CLASS = 8\n',
}
# Shrinks the model and dataset of every config the notebook loads.
SHRINK = '''
def _tiny(config):
    config.model.depth = 2
    config.data.synthetic.num_train, config.data.synthetic.num_val = 64, 32
    config.data.synthetic.num_shards = 2
    config.batch_size = 16
    return config
'''


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name, tmp_path):
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
  cells = notebook.cells
  at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
  cells.insert(at + 1, nbformat.v4.new_code_cell(SHRINK + TINY[name].format(tmp=tmp_path)))
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  outputs = "".join(o.get("text", "") for c in cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  if name == "quickstart":
    assert "true class: move_right" in outputs and "step 12: top-1" in outputs
    assert any("image/png" in o.get("data", {}) for o in cells[-1].outputs)  # the plot
  elif name == "masked_video_modeling":
    assert "reconstruction MSE on the validation clips" in outputs
    assert (tmp_path / "run" / "checkpoints").is_dir()
  else:
    assert "classes: ['move_left', 'move_right']" in outputs
    assert (tmp_path / "converted" / "labels.json").is_file()
