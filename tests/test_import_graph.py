"""newt's import graph has no cycles, and each stage's builder lives in the module its key names."""

from __future__ import annotations

from newt import STAGES
from newt.codeversion import import_graph, modules
from newt.pipeline import STAGE_DEFS, builders


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_newt_has_no_import_cycles() -> None:
    graph = import_graph()
    assert {"newt.pipeline", "newt.prepare", "newt.masking.scanner", "newt.train.child"} <= set(graph)
    # Imports inside functions count: they run too, and the builders used to reach the pipeline that way.
    assert "newt.preference" in graph["newt.prepare"]
    assert cycles(graph) == []


def test_the_graph_reads_relative_package_and_from_imports() -> None:
    graph = import_graph()
    assert "newt.masking.masker" in graph["newt.masking"]  # `from newt.masking.masker import ...`
    assert "newt.data" in graph["newt.preference"]  # `from newt.data import source_dir`, inside a function
    assert "newt.templates" in graph["newt.merge"]  # `from newt import templates`


def test_each_stage_builder_is_the_build_of_its_entry_module() -> None:
    built = builders()
    assert tuple(built) == STAGES
    for stage, sdef in STAGE_DEFS.items():
        assert built[stage].__module__ == sdef.entry, stage
    assert "newt.pipeline" not in modules()["newt.quantize"].imports
