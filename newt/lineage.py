"""Lineage: follow an artifact's manifest upstream to the data, tokenizer, template, recipe and code it came from.

Every committed artifact's `manifest.json` records the inputs of its key (`newt.cache.Store.commit`): the stage's
`code_version`, its recipe `fields`, the keys of its `upstream` nodes and the digests of its `external` inputs.
Keys are content hashes of exactly those inputs, so the chain of manifests is a complete, verifiable account of
where a GGUF file (or any other artifact) came from. `trace` walks it; `origins` sums it up; `format_trace` prints it.

    python -m newt.lineage RECIPE [NODE]      # NODE: an asset name, e.g. quantized_gguf_q8_0 (default: evaluation)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from newt.cache import Store, compute_key
from newt.pipeline import stage_of


@dataclass
class Trace:
    node: str  # asset name: a stage, or quantized_<method>
    stage: str
    key: str
    uri: str
    status: str  # hit | miss | corrupt
    code_version: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    external: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    committed_at: str | None = None
    key_verified: bool = False  # the manifest's inputs hash to the key it is stored under
    upstream: list[Trace] = field(default_factory=list)

    def walk(self):
        yield self
        for u in self.upstream:
            yield from u.walk()


def trace(store: Store, stage: str, key: str) -> Trace:
    """The lineage tree of the artifact `stage`/`key` (stage may be a node name such as `quantized_gguf_q8_0`)."""
    node = stage
    found = store.lookup(stage_of(node), key)
    if not found.hit:
        return Trace(node, stage_of(node), key, found.uri, found.status)
    manifest = found.manifest or {}
    inputs = manifest.get("inputs", {})
    return Trace(
        node=node, stage=stage_of(node), key=key, uri=found.uri, status="hit",
        code_version=inputs.get("code_version"), fields=inputs.get("fields", {}),
        external=inputs.get("external", {}), metadata=manifest.get("metadata", {}),
        committed_at=manifest.get("committed_at"), key_verified=compute_key(inputs) == key,
        upstream=[trace(store, u, k) for u, k in sorted(inputs.get("upstream", {}).items())],
    )


def origins(tree: Trace) -> dict[str, Any]:
    """What an artifact ultimately comes from: data versions, tokenizer and template digests, base weights,
    the recipe, and the code version of every stage on the way."""
    out: dict[str, Any] = {"artifact": f"{tree.stage}/{tree.key}", "code_versions": {}, "missing": []}
    for t in tree.walk():
        if t.status != "hit":
            out["missing"].append(f"{t.stage}/{t.key} ({t.status})")
            continue
        out["code_versions"][t.node] = t.code_version
        if "recipe" in t.metadata:
            out["recipe"] = t.metadata["recipe"]
        if t.stage == "dataset":
            out["data"] = t.external.get("sources")
        elif t.stage == "prepared":
            out["tokenizer_files"] = t.external.get("tokenizer_files")
            out["chat_template_sha256"] = t.external.get("chat_template_sha256")
            out["base_model"] = t.fields.get("base_model")
        elif t.stage == "trained":
            out["base_model_files"] = t.external.get("base_model_files")
            out["resolved_recipe"] = f"{t.uri}/recipe.json"
    return out


def format_trace(tree: Trace) -> str:
    """An indented tree: one line per artifact with its key and code version, then its external inputs."""
    lines: list[str] = []

    def show(t: Trace, depth: int) -> None:
        pad = "  " * depth + ("└─ " if depth else "")
        if t.status != "hit":
            lines.append(f"{pad}{t.node}  {t.stage}/{t.key}  NOT COMMITTED ({t.status}): materialize it first")
            return
        verified = "key verified" if t.key_verified else "KEY MISMATCH: manifest inputs do not hash to the key"
        lines.append(f"{pad}{t.node}  {t.stage}/{t.key}  code {t.code_version}  {t.committed_at}  ({verified})")
        detail = "  " * (depth + 1) + "   "
        if t.stage == "quantized":
            lines.append(f"{detail}method: {t.fields.get('quantize', {}).get('method')}")
        for name, value in t.external.items():
            text = json.dumps(value, sort_keys=True)
            lines.append(f"{detail}{name}: {text if len(text) <= 160 else text[:157] + '...'}")
        for u in t.upstream:
            show(u, depth + 1)

    show(tree, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from newt.config import load_recipe
    from newt.pipeline import plan

    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    recipe = load_recipe(args[0])
    node = args[1] if len(args) > 1 else "evaluation"
    keys = plan(recipe)
    if node not in keys:
        print(f"{node!r} is not an asset of recipe {recipe.name}; choose one of: {', '.join(keys)}", file=sys.stderr)
        return 2
    from newt.cache import store_from_env

    store = store_from_env()
    tree = trace(store, node, keys[node].key)
    print(format_trace(tree))
    print(json.dumps(origins(tree), indent=2, sort_keys=True))
    return 0 if tree.status == "hit" else 1


if __name__ == "__main__":
    sys.exit(main())
