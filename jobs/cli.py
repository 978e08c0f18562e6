"""The `newt` verbs that need Dagster: `newt run` (a recipe's job in this process, with progress) and `newt ui`.

They live in the Dagster layer so that the core (`newt/`) never imports dagster; `newt.cli` hands these verbs
over. In a checkout the layer is the top-level `assets/`, `resources/`, `jobs/` and `definitions.py`; installed
from the wheel it is the package `newt_dagster` (pyproject.toml), so it shadows no package of the project newt is
installed into.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import dagster as dg

from newt.errors import Interrupted, interrupted_by

from . import job_name

if (__package__ or "").startswith("newt_dagster"):  # installed from the wheel (pyproject.toml's package-dir)
    from ..assets import stage_asset_key
    from ..assets.factory import stage_result
    from ..resources.runs import mark_dead_runs, process_tags
else:  # a checkout: top-level packages beside newt/
    from assets import stage_asset_key
    from assets.factory import stage_result
    from resources.runs import mark_dead_runs, process_tags

LAYER = Path(__file__).resolve().parents[1]  # the checkout root, or site-packages/newt_dagster (definitions.py)
CHECKOUT = (LAYER / "workspace.yaml").is_file() and (LAYER / "newt").is_dir()


def build_definitions(recipe_file: Path) -> dg.Definitions:
    """The code location's definitions for one recipe file. `definitions` is imported here, not at the top:
    importing it builds the definitions of every recipe in the recipes folder (seconds), which a run of one
    file, and a run of cache hits above all, does not need."""
    if (__package__ or "").startswith("newt_dagster"):
        from .. import definitions
    else:
        import definitions
    return definitions.build_definitions(recipe_files=[recipe_file])


def step_error(error: Any) -> str:
    """The message of a failed step: the outermost error of its chain that is not Dagster's own wrapper — the
    stage's (newt's) error with its fix, not the library error it was raised from."""
    while error is not None and error.cls_name and error.cls_name.startswith("Dagster") and error.cause:
        error = error.cause
    if error is None:
        return "see the run log"
    text = error.message.strip()
    # Dagster writes "<module>.<Class>: <message>"; newt's own message stands alone, another library's keeps
    # its class name (as newt.errors.message shows it).
    prefix = re.match(rf"^((?:[\w]+\.)*){re.escape(error.cls_name or '')}: ", text)
    if prefix:
        text = text[prefix.end():] if prefix.group(1).startswith("newt.") else f"{error.cls_name}: " + text[prefix.end():]
    return text


# --- run -------------------------------------------------------------------------------------------------------

STEP_RE = re.compile(r"^step=(\d+)\b(.*)$")


class Progress:
    """Turns the run's Dagster log records into terminal progress: a line per stage, a bar for training steps."""

    def __init__(self, recipe: Any, stream: TextIO | None = None, debug: bool = False):
        self.recipe = recipe
        self.debug = debug
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started: dict[str, float] = {}
        self.cache: dict[str, str] = {}
        self.failed_checks: list[str] = []
        self.bar = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def handle(self, record: Any) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or ""
        stage = step.rsplit("__", 1)[-1] if step else ""
        event = meta.get("dagster_event")
        if event is None:
            self._message(stage, str(meta.get("orig_message", record.getMessage())), record.levelno)
            return
        kind = event.event_type_value
        data = event.event_specific_data
        if kind == "STEP_START":
            self.step_start(stage)
        elif kind == "ASSET_MATERIALIZATION":
            cache = data.materialization.metadata.get("cache")
            self.cache[stage] = getattr(cache, "value", "") or ""
        elif kind == "ASSET_CHECK_EVALUATION":
            self.check(data.check_name, data.passed, data.metadata.get("verdicts"))
        elif kind == "STEP_SUCCESS":
            self.step_success(stage)
        elif kind == "STEP_FAILURE":
            error = getattr(data, "error", None)
            self.step_failure(stage, step_error(error))
            if self.debug and error is not None:  # --debug: the whole chain, tracebacks included
                self._print(error.to_string())

    def step_start(self, stage: str) -> None:
        self.started[stage] = time.monotonic()
        self._print(f"▶ {stage}")

    def check(self, name: str, passed: bool, verdicts: Any) -> None:
        mark = "✓" if passed else "✗"
        self._print(f"  {mark} check {name}: {'passed' if passed else 'FAILED'}")
        if verdicts is not None:
            for line in str(getattr(verdicts, "value", verdicts)).splitlines():
                self._print(f"      {line}")
        if not passed:
            self.failed_checks.append(name)

    def step_success(self, stage: str) -> None:
        self._close_bar()
        took = time.monotonic() - self.started.get(stage, time.monotonic())
        self._print(f"✓ {stage}  {self.cache.get(stage, '')}  {took:.1f} s")

    def step_failure(self, stage: str, message: str) -> None:
        self._close_bar()
        self._print(f"✗ {stage} failed: {message}")

    def _message(self, stage: str, message: str, level: int) -> None:
        match = STEP_RE.match(message)
        if stage == "trained" and match:
            step, rest = int(match.group(1)), match.group(2).strip()
            if self.tty:
                if self.bar is None:
                    from tqdm import tqdm

                    self.bar = tqdm(
                        total=self.recipe.max_steps, desc="  training", unit="step", file=self.stream
                    )
                # the bar shows the loss; the full line (lr, grad norm, tokens/s) is in the run log
                self.bar.set_postfix_str(
                    " ".join(f for f in rest.split() if f.startswith("loss=")), refresh=False
                )
                self.bar.update(step - self.bar.n)
            else:  # a log file gets one line per logging step
                total = f"/{self.recipe.max_steps}" if self.recipe.max_steps else ""
                self._print(f"  trained: step {step}{total} {rest}")
            return
        if level >= 20 and stage:  # INFO and above from the stage's own code (which names itself)
            self._print(f"  {message if message.startswith(stage) else f'{stage}: {message}'}")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_logger(progress: Progress):
    import logging

    import dagster as dg

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                progress.handle(record)
            except Exception:  # noqa: BLE001 - progress display must never fail a run
                self.handleError(record)

    @dg.logger(description="newt CLI progress")
    def newt_progress(_init_context):
        # A private logger, not logging.getLogger(): its handler must not outlive this run or reach other loggers.
        logger = logging.Logger("newt.cli.progress", level=logging.DEBUG)  # noqa: LOG001
        logger.addHandler(Handler())
        return logger

    return newt_progress


def cmd_run(args: argparse.Namespace) -> int:
    from newt.cache import store_from_env
    from newt.config import load_recipe
    from newt.pipeline import committed_outcomes, nodes

    recipe = load_recipe(args.recipe)
    known = nodes(recipe)  # the six stages plus quantized_<method> for each further quantize output
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(known)
    unknown = [s for s in stages if s not in known]
    if unknown:
        print(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(known)}", file=sys.stderr)
        return 2
    stages = sorted(stages, key=known.index)  # build order, as the run executes them
    progress = Progress(recipe, debug=getattr(args, "debug", False))
    store = store_from_env()
    print(f"newt run {recipe.name}: {', '.join(stages)} → store {store.root}", file=sys.stderr)
    started = time.monotonic()
    # A persistent instance keeps the run in the UI's history; without DAGSTER_HOME the run is not recorded.
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        for run_id in mark_dead_runs(instance):  # a killed run must not hold the `gpu` pool slot for ever
            print(f"newt run: run {run_id} had no process left (killed?): marked failed, its slots freed",
                  file=sys.stderr)
        try:
            hits = committed_outcomes(recipe, stages, store)
        except Exception:  # noqa: BLE001 - e.g. a source that cannot be read: the run reports it as its step's failure
            hits = None
        if hits is not None:  # nothing to build: record the hits without the cost of a Dagster run
            return record_hits(recipe, hits, instance, progress, started)
        result = execute(recipe, Path(args.recipe), stages, instance, progress)
    stopped = interrupted_by()
    if stopped:  # Ctrl-C or SIGTERM: Dagster ended the step (and the training child's process group)
        raise Interrupted(stopped, f"newt run {recipe.name}: stopped by {signal.Signals(stopped).name} after "
                                   f"{time.monotonic() - started:.1f} s (run {result.run_id} failed; a rerun "
                                   "resumes training from its last checkpoint)")
    failed_checks = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return finish(recipe, started, result.success, failed_steps, failed_checks, f"run {result.run_id}")


def execute(recipe: Any, recipe_file: Path, stages: list[str], instance: dg.DagsterInstance,
            progress: Progress) -> dg.ExecuteInProcessResult:
    """The recipe's job in this process, for the selected stages, with `progress` as its only logger."""
    defs = build_definitions(recipe_file)
    # Our logger replaces Dagster's console logger: progress lines instead of every engine event.
    job = defs.resolve_job_def(job_name(recipe)).with_logger_defs({"newt": _progress_logger(progress)})
    return job.execute_in_process(
        run_config={"loggers": {"newt": {}}},
        instance=instance,
        raise_on_error=False,
        asset_selection=[stage_asset_key(recipe.name, s) for s in stages],
        tags={"newt/trigger": "cli", **process_tags()},
    )


# The tag under which a materialization carries its data version: what `MaterializeResult(data_version=...)`
# records, and what Dagster's own REST endpoint for reporting a materialization sets from its `data_version`
# parameter (dagster_webserver/external_assets.py).
DATA_VERSION_TAG = "dagster/data_version"


def record_hits(recipe: Any, hits: dict[str, Any], instance: dg.DagsterInstance, progress: Progress,
                started: float) -> int:
    """Every selected stage is committed under its current key: record each as the materialization its asset
    would record on a hit (the same metadata, `cache: hit`, its key as data version), and the evaluation gates as
    check evaluations, in build order, without a run — creating and executing a run of hits costs seconds of
    Dagster bookkeeping (docs/performance.md). The output and the exit code are those of the run."""
    failed_steps = []
    for node, outcome in hits.items():
        progress.step_start(node)
        key = stage_asset_key(recipe.name, node)
        metadata, checks = stage_result(recipe, node, outcome, instance)
        progress.cache[node] = outcome.cache
        instance.report_runless_asset_event(
            dg.AssetMaterialization(key, metadata=metadata, tags={DATA_VERSION_TAG: outcome.key})
        )
        for c in checks or []:  # the gates are blocking checks (assets/factory.py)
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(key, c.check_name, c.passed, metadata=c.metadata, severity=c.severity,
                                        blocking=True)
            )
            progress.check(c.check_name, c.passed, c.metadata.get("verdicts"))
        failed = [c.check_name for c in checks or [] if not c.passed]
        if failed:  # as in a run: a failed blocking check fails its step
            failed_steps.append("__".join(key.path))
            progress.step_failure(node, f"blocking check(s) failed: {', '.join(failed)}")
        else:
            progress.step_success(node)
    return finish(recipe, started, not failed_steps, failed_steps, progress.failed_checks,
                  "every stage a cache hit: recorded without a run")


def finish(recipe: Any, started: float, success: bool, failed_steps: list[str], failed_checks: list[str],
           where: str) -> int:
    took = time.monotonic() - started
    if success and not failed_checks:
        print(f"newt run {recipe.name}: ok in {took:.1f} s ({where})", file=sys.stderr)
        return 0
    what = [f"failed step(s): {', '.join(failed_steps)}"] if failed_steps else []
    what += [f"failed check(s): {', '.join(failed_checks)}"] if failed_checks else []
    print(f"newt run {recipe.name}: FAILED in {took:.1f} s ({'; '.join(what) or 'see above'}; {where})",
          file=sys.stderr)
    return 1


# --- ui --------------------------------------------------------------------------------------------------------


def check_recipes(folder: Path) -> None:
    """Every recipe of the folder the UI will load, checked first: one message naming each bad file, instead of
    a code location error inside the UI."""
    from newt.config import RecipeError, load_recipe

    if not folder.is_dir():
        raise FileNotFoundError(f"newt ui: the recipes folder {folder} does not exist; fix: give --recipes FOLDER "
                                "or set NEWT_RECIPES to a folder of recipe YAML files")
    problems = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            load_recipe(path)
        except RecipeError as exc:
            problems += [f"{path.name}: {p}" for p in exc.problems]
    if problems:
        raise RecipeError(str(folder), problems)


def cmd_ui(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    base = LAYER if CHECKOUT else Path.cwd()  # installed: history and recipes of the folder it is started in
    if not env.get("DAGSTER_HOME"):  # like `make ui`: run history inside the checkout, git-ignored
        home = base / ".dagster_home"
        home.mkdir(exist_ok=True)
        if not (home / "dagster.yaml").exists():
            shutil.copy(LAYER / "dagster.yaml", home / "dagster.yaml")
        env["DAGSTER_HOME"] = str(home)
    if args.recipes:
        env["NEWT_RECIPES"] = str(Path(args.recipes).resolve())
    elif not env.get("NEWT_RECIPES"):
        env["NEWT_RECIPES"] = str(base / "recipes")
    check_recipes(Path(env["NEWT_RECIPES"]))
    dagster = Path(sys.executable).with_name("dagster")
    where = ["-w", str(LAYER / "workspace.yaml")] if CHECKOUT else ["-m", "newt_dagster.definitions"]
    cmd = [str(dagster) if dagster.exists() else "dagster", "dev", *where, "-h", "127.0.0.1", "-p", str(args.port)]
    print(
        f"newt ui: http://127.0.0.1:{args.port}  (DAGSTER_HOME={env['DAGSTER_HOME']}; Ctrl-C stops it)",
        file=sys.stderr,
    )
    # Replace this process: Ctrl-C and SIGTERM then reach dagster dev itself, which shuts down its children.
    # Both go back to their defaults first: started with `&` from a script, SIGINT arrives ignored, exec keeps it
    # ignored, and dagster dev (which handles SIGTERM like SIGINT) would then not stop (../shared/ENVIRONMENT.md).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    if CHECKOUT:
        os.chdir(LAYER)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
