"""pytest puts this folder on sys.path (for its conftest), so tests in subfolders can import the
shared helpers of tests/test_train.py."""

import os
import sys
import tempfile

# The torch extra's CUDA wheels bring triton, whose native library crashes the process when it
# loads after TensorFlow's (transformers and torchvision import it through torch._dynamo). The
# tests run PyTorch on the CPU and never need it: `import triton` fails as if it were absent.
sys.modules.setdefault("triton", None)

from vidtx import host  # noqa: E402

host.keep_freed_memory()  # as vidtx.main does: training steps reuse the last step's memory

# Many tests compile the same tiny programs again, in this process and in the `vidtx.main`
# subprocesses they start (which inherit the environment): JAX's persistent compilation cache
# serves them from disk. Keyed by the program, JAX version and flags, so it is never stale.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"vidtx-test-jax-cache-{os.getuid()}"))
