"""pytest puts this folder on sys.path (for its conftest), so tests in subfolders can import the
shared helpers of tests/test_train.py."""
