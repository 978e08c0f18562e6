"""How a training child talks to whoever launched it.

Under Dagster Pipes (the launcher set DAGSTER_PIPES_CONTEXT) rank 0 — and only rank 0, since every rank inherits
the Pipes environment — opens the Pipes context: log lines go to the Dagster run log and the final metrics become
the materialization's metadata. Otherwise, or on other ranks, lines go to stdout. Either way the final metrics are
also written to `metrics.json` in the output folder, so the caller never depends on the channel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


class Reporter:
    def __init__(self) -> None:
        self._pipes = None
        self._cm = None
        if rank() == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._cm = open_dagster_pipes()
            self._pipes = self._cm.__enter__()

    @property
    def under_pipes(self) -> bool:
        return self._pipes is not None

    @property
    def run_id(self) -> str | None:
        """The Dagster run that launched this child (None outside Pipes)."""
        return self._pipes.run_id if self._pipes is not None else None

    def log(self, message: str) -> None:
        if rank() != 0:
            return
        if self._pipes is not None:
            self._pipes.log.info(message)
        else:
            print(message, flush=True)

    def finish(self, output: Path, metrics: dict[str, Any]) -> None:
        if rank() != 0:
            return
        (Path(output) / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if self._pipes is not None:
            self._pipes.report_asset_materialization(metadata={k: v for k, v in metrics.items() if v is not None})

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._pipes = None
