import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_readme_starts_with_the_demo_and_test_commands():
  demo, tests = readme_commands()[:2]
  assert "pip install -e ." in demo and "vidtx.main --config=configs/demo.py" in demo
  assert "pip install -q -e '.[test,torch]'" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert readme_commands()[1] in ci.splitlines()
