"""Settings for the host process, made before anything starts a thread: entry points call
`keep_freed_memory()` before their other imports (numpy starts threads when imported)."""

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def will_run_on_cpu() -> bool:
  """Whether JAX's default backend will be the CPU, found without starting it (or importing
  jax): the first of `jax_platforms` when it is set, else whether no accelerator plugin is
  installed."""
  jax = sys.modules.get("jax")
  platforms = jax.config.jax_platforms if jax else os.environ.get("JAX_PLATFORMS")
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not (list(importlib.metadata.entry_points(group="jax_plugins"))
              or importlib.util.find_spec("jax_plugins")
              or importlib.util.find_spec("libtpu"))


def keep_freed_memory() -> bool:
  """On the CPU backend, keep freed memory in the process for reuse instead of unmapping it.

  XLA:CPU allocates each step's scratch memory afresh (124 MB for the synthetic ViT config,
  more for larger models) and frees it at the end of the step. glibc maps an allocation of over
  32 MB freshly from the kernel and unmaps it when freed, so every page of it faults again in
  every step (30,000 page faults for the synthetic config). One malloc arena that never maps
  or trims keeps that memory for the next step.

  The heap then keeps the largest blocks it ever needed, so peak memory grows (BENCHMARKS.md has
  the figures); set VIDTX_KEEP_FREED_MEMORY=0 where memory is tighter than time.

  Only effective before other threads start: a thread keeps the arena it first allocated from.
  Returns whether it applied: on Linux with glibc, on the CPU backend, unless turned off.
  """
  if os.environ.get("VIDTX_KEEP_FREED_MEMORY", "1") == "0":
    return False
  if not sys.platform.startswith("linux") or not will_run_on_cpu():
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  # A trim threshold of -1 turns trimming off.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  return all(mallopt(parameter, value) == 1 for parameter, value in settings)
