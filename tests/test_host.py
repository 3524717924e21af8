"""vidtx.host: freed memory stays in the process on the CPU backend."""

import json
import os
import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MB block (the size of a training step's scratch memory) a few
# times, from a thread as XLA:CPU does, and counts the page faults of each round: memory mapped
# afresh faults once per 4 KiB page.
SCRIPT = """
import ctypes, json, resource, sys, threading
from vidtx import host
applied = host.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = libc.memset.argtypes = [ctypes.c_void_p]
size, faults = 64 * 2**20, []
def step():
  block = libc.malloc(size)
  libc.memset(block, 1, size)
  libc.free(block)
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  worker = threading.Thread(target=step)
  worker.start()
  worker.join()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""
PAGES = 64 * 2**20 // 4096


def run_script(mode, platforms="cpu", **env_vars):
  env = {**os.environ, "JAX_PLATFORMS": platforms, "VIDTX_KEEP_FREED_MEMORY": "1", **env_vars}
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_on_cpu():
  plain = run_script("plain")
  assert not plain["applied"]
  assert min(plain["faults"]) > PAGES / 2  # the problem: each round maps fresh pages
  kept = run_script("keep")
  assert kept["applied"]
  assert kept["faults"][0] > PAGES / 2  # the first round grows the heap...
  assert max(kept["faults"][1:]) < PAGES / 100  # ...and the others reuse it


@pytest.mark.parametrize("settings", [{"platforms": "cuda,cpu"},  # an accelerator first
                                      {"VIDTX_KEEP_FREED_MEMORY": "0"}])  # turned off
def test_left_alone(settings):
  kept = run_script("keep", **settings)
  assert not kept["applied"]
  assert min(kept["faults"]) > PAGES / 2
