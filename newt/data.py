"""The `dataset` stage: fetch every source's rows into the store, as they are, one Arrow folder per source.

Nothing is interpreted here (formats and masks are `prepared`'s business), so the artifact changes only when the
data's content does. Its key holds each source's content version (sha256 of local bytes, ETag/generation of objects).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from newt.stage import StageRun


def source_dir(dataset_artifact: Path, index: int) -> Path:
    return Path(dataset_artifact) / "sources" / str(index)


def build(run: StageRun) -> dict[str, Any]:
    from newt.sources import load_source

    versions = run.extra.get("versions") or []
    rows = []
    with tempfile.TemporaryDirectory(prefix="newt-hf-cache-") as hf_cache:
        for i, spec in enumerate(run.recipe.datasets):
            ds = load_source(spec, key_path=f"datasets[{i}]", cache_dir=hf_cache,
                             version=versions[i] if i < len(versions) else None)
            ds.save_to_disk(str(source_dir(run.workdir, i)))
            rows.append(len(ds))
            run.log(f"dataset: datasets[{i}] {spec.path}: {len(ds)} rows, columns {ds.column_names}")
    return {"rows": sum(rows), "rows_per_source": rows}
