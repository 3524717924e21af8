"""pytest puts this folder on sys.path (for its conftest), so tests in subfolders can import the
shared helpers of tests/test_train.py."""

from vidtx import host

host.keep_freed_memory()  # as vidtx.main does: training steps reuse the last step's memory
