"""The module graph of vidtx has no cycle: no module imports one that imports it back, directly
or through others (imports inside functions count too), so every module can be read, tested
and changed from the leaves up."""

import ast
import os

import vidtx

ROOT = os.path.dirname(vidtx.__file__)


def module_names() -> dict[str, str]:
  """{"vidtx.models.vit": path, ...} for every module of the package."""
  names = {}
  for directory, _, files in os.walk(ROOT):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(directory, file)
        parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        names[".".join(parts)] = path
  return names


def imports(path: str, name: str, modules) -> set[str]:
  """The vidtx modules `name` imports: `from vidtx.a import b` counts as vidtx.a.b when that is
  a module (a package's __init__ is not run through for its submodules' sake)."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
      for alias in node.names:
        if f"{base}.{alias.name}" in modules:
          found.add(f"{base}.{alias.name}")
        elif base in modules:
          found.add(base)
  found.discard(name)
  return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One cycle of `graph` as [a, b, ..., a], or []."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for other in sorted(graph[node]):
      if state.get(other) == "open":
        return stack[stack.index(other):] + [other]
      if other not in state:
        cycle = visit(other)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return []

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return []


def test_no_module_imports_itself_back():
  modules = module_names()
  graph = {name: imports(path, name, modules) for name, path in modules.items()}
  assert graph["vidtx.train"] and graph["vidtx.models"]  # the parser sees imports
  assert find_cycle(graph) == []


def test_no_package_imports_itself_back():
  """The same at the level of the subpackages (vidtx.models, vidtx.weights, vidtx.data,
  vidtx.tools; top-level modules stand for themselves): e.g. the model files list their weight
  converters, so no weight converter may import a model file."""
  modules = module_names()
  package = lambda name: ".".join(name.split(".")[:2])
  graph = {}
  for name, path in modules.items():
    graph.setdefault(package(name), set()).update(
        package(other) for other in imports(path, name, modules) if package(other) != package(name))
  assert "vidtx.weights" in graph["vidtx.models"]
  assert find_cycle(graph) == []


def test_the_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_errors_is_a_leaf_and_the_entry_points_do_not_import_the_loop():
  modules = module_names()
  graph = {name: imports(path, name, modules) for name, path in modules.items()}
  assert graph["vidtx.errors"] == set()
  for name in ("vidtx.evaluate", "vidtx.predict", "vidtx.tools.export", "vidtx.tools.flops",
               "vidtx.tools.convert_weights", "vidtx.tools.visualize_attention",
               "vidtx.tools.visualize_masks"):
    assert "vidtx.train" not in reachable(graph, name), name


def reachable(graph, start) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for other in graph[todo.pop()] - seen:
      seen.add(other)
      todo.append(other)
  return seen
