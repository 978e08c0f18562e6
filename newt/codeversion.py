"""Code versions of the stages, derived: the source of every newt module a stage's entry points import
(transitively), plus the installed versions of the libraries those modules import. Nothing here is a hand-kept list.

The import graph is read statically (`ast`), so nothing is imported to compute it and an import inside a function
counts like one at the top: a builder that imports `newt.merge` inside its body still runs that code. Importing
`newt.a.b` also runs `newt/__init__.py` and `newt/a/__init__.py`, so a module's closure includes its packages.

A library counts by its distribution's version (`importlib.metadata`): an upgrade of transformers (new chat-template
rendering, new tokenization) changes the version of every stage whose code imports it. A library that is imported
but not installed (an optional extra) counts as absent, so installing it changes the key too.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from newt import __version__

ROOT = Path(__file__).resolve().parent  # the `newt` package folder
PACKAGE = ROOT.name
# A module lists here the libraries its code runs without importing them: a tool it launches as a process
# (`python -m accelerate.commands.launch`), a backend transformers loads for it (bitsandbytes behind
# `BitsAndBytesConfig`). Read from the source like the imports, so it counts for every stage that imports the module.
USES = "USES_LIBRARIES"


class CodeVersionError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModuleSource:
    name: str  # dotted module name, e.g. newt.masking.scanner
    path: Path
    source: bytes
    imports: frozenset[str]  # newt modules it imports (resolved to modules, parents not added)
    libraries: frozenset[str]  # top-level names of the third-party packages it imports


def module_files() -> dict[str, Path]:
    """{dotted name: file} of every module of the newt package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except those under `if TYPE_CHECKING:` (imports for type hints never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


@functools.lru_cache(maxsize=1024)
def _parse(name: str, path: Path, source: bytes, known: frozenset[str]) -> ModuleSource:
    """Imports of one module's source (cached by content: an edited file is parsed again)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    imports: set[str] = set()
    libraries: set[str] = set()

    def add(target: str) -> None:
        top = target.split(".")[0]
        if top == PACKAGE:
            # `import newt.a.b` names the module newt.a.b; keep the longest prefix that is a module
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                imports.add(target)
        elif top and top not in sys.stdlib_module_names and top != "__future__":
            libraries.add(top)

    for node in _runtime_nodes(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            add(module)
            for alias in node.names:  # `from newt import data` imports the module newt.data
                if f"{module}.{alias.name}" in known:
                    imports.add(f"{module}.{alias.name}")
    for node in ast.parse(source).body if USES in source.decode(errors="replace") else ():
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == USES for t in node.targets):
            libraries.update(ast.literal_eval(node.value))
    imports.discard(name)
    return ModuleSource(name, path, source, frozenset(imports), frozenset(libraries))


def modules() -> dict[str, ModuleSource]:
    """Every newt module with its source and its imports, read from disk now.

    Parsing every module costs seconds in each process that computes a key (`newt run`, `newt plan`), so the
    imports found in a module are kept in newt's cache folder by the digest of what decides them: the module's
    name and source, the set of newt's module names, and this file's own source (the parser)."""
    from newt.home import cache_dir

    files = module_files()
    known = frozenset(files)
    sources = {name: path.read_bytes() for name, path in files.items()}
    context = hashlib.sha256(Path(__file__).read_bytes() + "\0".join(sorted(known)).encode()).hexdigest()
    path = cache_dir() / "code_version" / f"imports-{context[:24]}.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    out, found = {}, {}
    for name, file in files.items():
        digest = hashlib.sha256(name.encode() + b"\0" + sources[name]).hexdigest()
        if digest in cached:
            imports, libraries = cached[digest]
            out[name] = ModuleSource(name, file, sources[name], frozenset(imports), frozenset(libraries))
        else:
            out[name] = _parse(name, file, sources[name], known)
        found[digest] = [sorted(out[name].imports), sorted(out[name].libraries)]
    if found != cached:
        _write_json(path, found)  # only the current modules: an edited module's old entry goes
    return out


def import_graph() -> dict[str, frozenset[str]]:
    """{module: the newt modules it imports}: the graph `tests/test_import_graph.py` keeps acyclic."""
    return {name: m.imports for name, m in modules().items()}


def closure(entry_points: list[str], mods: dict[str, ModuleSource] | None = None) -> list[str]:
    """Every newt module that running `entry_points` may execute: their imports, transitively, and the packages
    (`__init__`) of each."""
    mods = modules() if mods is None else mods
    seen: set[str] = set()
    todo = list(entry_points)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in mods:
            raise CodeVersionError(f"code version: {name} is not a module of the {PACKAGE} package")
        seen.add(name)
        todo += [*mods[name].imports, *(p for p in _parents(name) if p in mods)]
    return sorted(seen)


def installed() -> str:
    """A digest of what is installed where Python looks: every distribution's metadata folder on `sys.path`, by
    name (which carries the version) and modification time (a reinstall writes it anew)."""
    h = hashlib.sha256()
    for entry in sys.path:
        try:
            found = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(entry or ".")
                           if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:  # not a folder (a zip, a missing path)
            continue
        h.update(json.dumps([entry, found]).encode())
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, tuple[str, ...]]:
    """{top-level import name: distributions providing it}. `packages_distributions()` reads the file list of every
    installed distribution (seconds on a large environment, in every process that computes a key), so its answer
    is kept in newt's cache folder for as long as the installed distributions stay the same."""
    from newt.home import cache_dir

    path = cache_dir() / "code_version" / f"distributions-{installed()}.json"
    try:
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    found = {k: tuple(v) for k, v in importlib.metadata.packages_distributions().items()}
    _write_json(path, found)
    return found


def _write_json(path: Path, data: object) -> None:
    try:  # written whole, then renamed: a concurrent reader sees the old file or the new one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder only costs the work again
        pass


def library_versions(names: set[str] | frozenset[str]) -> dict[str, str | None]:
    """{distribution: installed version or None} for top-level import names (absent ones keep their import name)."""
    dists = _distributions()
    out: dict[str, str | None] = {}
    for name in sorted(names):
        for dist in dists.get(name, (name,)):
            try:
                out[dist.lower()] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out.setdefault(dist.lower(), None)
    return out


@dataclass(frozen=True)
class CodeVersion:
    version: str  # 16 hex chars
    modules: dict[str, str]  # {module: sha256[:16] of its source}
    libraries: dict[str, str | None]  # {distribution: version}

    def describe(self) -> dict[str, object]:
        """What goes into a key's readable inputs, so `newt plan` can name what changed."""
        return {"version": self.version, "modules": self.modules, "libraries": self.libraries}


def code_version(entry_points: list[str]) -> CodeVersion:
    """The code version of a stage run by `entry_points` (module names): newt's version, the source of every
    module in their closure, and the versions of the libraries that closure imports."""
    mods = modules()
    names = closure(entry_points, mods)
    sources = {n: hashlib.sha256(mods[n].source).hexdigest()[:16] for n in names}
    libraries = library_versions(frozenset().union(*(mods[n].libraries for n in names)))
    h = hashlib.sha256(__version__.encode())
    for n in names:
        h.update(n.encode() + b"\0" + sources[n].encode() + b"\0")
    for dist, version in libraries.items():
        h.update(f"{dist}=={version}\0".encode())
    return CodeVersion(h.hexdigest()[:16], sources, libraries)
