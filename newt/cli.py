"""The `newt` command line: work with recipes without the UI.

    newt validate RECIPE     load and check a recipe (newt or Axolotl YAML); every problem at once
    newt plan RECIPE         per stage: cache hit or miss, and for a miss which key inputs changed since the
                             recipe's last committed artifact of that stage
    newt preview RECIPE      the first rows as the model sees them: trained tokens in color, masked ones dim
    newt run RECIPE          materialize the recipe's six stages in this process, with progress; exit code 1
                             when a step or an evaluation gate fails
    newt chat RECIPE         talk to a built stage's model (--stage, --prompt, --image); builds nothing
    newt ui                  the Dagster UI (dagster dev) on 127.0.0.1

RECIPE is a YAML file anywhere; its file stem names the recipe (the asset group). The store is NEWT_STORE
(default .newt/store) with NEWT_STORE_OPTIONS; run history goes to DAGSTER_HOME when it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from newt import STAGES

ROOT = (
    Path(__file__).resolve().parents[1]
)  # the checkout holding definitions.py, assets/, jobs/, workspace.yaml


def _store():
    from newt.cache import store_from_env

    return store_from_env()


def _color(stream: TextIO, no_color: bool) -> bool:
    return not no_color and not os.environ.get("NO_COLOR") and stream.isatty()


# --- validate --------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from newt.config import load_recipe

    recipe = load_recipe(args.recipe)
    print(
        f"{args.recipe}: ok (recipe {recipe.name}, base_model {recipe.base_model}, {len(recipe.datasets)} dataset(s))"
    )
    for note in recipe.notes:  # how Axolotl spellings were read: accepted, never silently
        print(f"  note: {note}")
    return 0


# --- plan ------------------------------------------------------------------------------------------------------


def previous_manifest(store: Any, stage: str, recipe_name: str) -> dict[str, Any] | None:
    """The latest committed manifest of `stage` built for the recipe named `recipe_name` (None if there is none)."""
    base = store.path(stage, "_").rsplit("/", 1)[0]
    try:
        entries = store.fs.ls(base, detail=False)
    except FileNotFoundError:
        return None
    best: dict[str, Any] | None = None
    for entry in entries:
        key = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if key.startswith("."):  # work folders of running or crashed builds
            continue
        found = store.lookup(stage, key)
        if not found.hit or found.manifest.get("metadata", {}).get("recipe") != recipe_name:
            continue
        if best is None or found.manifest.get("committed_at", "") > best.get("committed_at", ""):
            best = found.manifest
    return best


def diff_inputs(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old, new) for every leaf that differs between two key-input trees; `<absent>` marks a side."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            out.extend(diff_inputs(old.get(k, "<absent>"), new.get(k, "<absent>"), sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in diff_inputs(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{20,}", value):
        return value[:12] + "…"
    return text if len(text) <= 60 else text[:57] + "…"


def cmd_plan(args: argparse.Namespace) -> int:
    from newt.config import load_recipe
    from newt.pipeline import nodes, plan

    recipe = load_recipe(args.recipe)
    store = _store()
    keys = plan(recipe)
    width = max(len(s) for s in nodes(recipe))
    print(f"recipe {recipe.name} ({args.recipe}); store {store.root}")
    for stage in nodes(recipe):  # the six stages plus quantized_<method> for each further quantize output
        info = keys[stage]
        found = store.lookup(info.stage, info.key)
        print(f"{stage:<{width}}  {found.status:<7} {info.key}  {found.uri if found.hit else ''}".rstrip())
        if found.hit:
            continue
        if found.status == "corrupt":
            print(f"{'':<{width}}    {found.reason}; it will be rebuilt")
        before = previous_manifest(store, info.stage, recipe.name)
        if before is None:
            print(f"{'':<{width}}    never built for recipe {recipe.name}")
            continue
        changes = diff_inputs(before.get("inputs", {}), info.inputs)
        print(f"{'':<{width}}    changed since {before['key'][:12]}… ({before.get('committed_at', '?')}):")
        for path, old, new in changes:
            print(f"{'':<{width}}      {path}: {_short(old)} → {_short(new)}")
    return 0


# --- preview ---------------------------------------------------------------------------------------------------

GREEN, DIM, BOLD, RESET = "\x1b[32m", "\x1b[2m", "\x1b[1m", "\x1b[0m"
IGNORE = -100


def render_row(ids: list[int], labels: list[int], tokenizer: Any, color: bool) -> str:
    """Trained spans bold green and masked spans dim; without color, trained spans are wrapped in ⟦…⟧."""
    spans: list[tuple[bool, list[int]]] = []
    for t, label in zip(ids, labels):
        trained = label != IGNORE
        if spans and spans[-1][0] == trained:
            spans[-1][1].append(t)
        else:
            spans.append((trained, [t]))
    out = []
    for trained, toks in spans:
        text = tokenizer.decode(toks)
        if color:
            out.append(f"{BOLD}{GREEN}{text}{RESET}" if trained else f"{DIM}{text}{RESET}")
        else:
            out.append(f"⟦{text}⟧" if trained else text)
    return "".join(out)


def cmd_preview(args: argparse.Namespace) -> int:
    from newt import models
    from newt.config import load_recipe
    from newt.masking.boundaries import text_tokenizer
    from newt.pipeline import plan, run_stage
    from newt.prepare import load_prepared

    recipe = load_recipe(args.recipe)
    store = _store()
    keys = plan(recipe, ("prepared",))

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    for stage in ("dataset", "prepared"):  # cache hits when built; otherwise built (and kept) now
        outcome = run_stage(recipe, stage, store, keys=keys, log=log)
        print(f"{stage}: {outcome.cache} {outcome.key}", file=sys.stderr)
    rows = load_prepared(store.local_path("prepared", keys["prepared"].key), args.split)
    tok = text_tokenizer(
        models.load_tokenizer(
            recipe.tokenizer_config or recipe.base_model, trust_remote_code=recipe.trust_remote_code
        )
    )
    color = _color(sys.stdout, args.no_color)
    legend = (
        f"{BOLD}{GREEN}trained{RESET} · {DIM}masked (label -100){RESET}"
        if color
        else "⟦trained⟧ · masked (label -100)"
    )
    print(f"recipe {recipe.name}, split {args.split}: {len(rows)} rows; legend: {legend}")
    for r in range(min(args.rows, len(rows))):
        ids, labels = list(rows[r]["input_ids"]), list(rows[r]["labels"])
        supervised = sum(1 for x in labels if x != IGNORE)
        print(f"\n── row {r}: {len(ids)} tokens, {supervised} trained " + "─" * 20)
        print(render_row(ids, labels, tok, color))
    return 0


# --- run -------------------------------------------------------------------------------------------------------

STEP_RE = re.compile(r"^step=(\d+)\b(.*)$")


class Progress:
    """Turns the run's Dagster log records into terminal progress: a line per stage, a bar for training steps."""

    def __init__(self, recipe: Any, stream: TextIO | None = None):
        self.recipe = recipe
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
            self.started[stage] = time.monotonic()
            self._print(f"▶ {stage}")
        elif kind == "ASSET_MATERIALIZATION":
            cache = data.materialization.metadata.get("cache")
            self.cache[stage] = getattr(cache, "value", "") or ""
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = data
            mark = "✓" if evaluation.passed else "✗"
            verdicts = evaluation.metadata.get("verdicts")
            self._print(
                f"  {mark} check {evaluation.check_name}: {'passed' if evaluation.passed else 'FAILED'}"
            )
            if verdicts is not None:
                for line in str(verdicts.value).splitlines():
                    self._print(f"      {line}")
            if not evaluation.passed:
                self.failed_checks.append(evaluation.check_name)
        elif kind == "STEP_SUCCESS":
            self._close_bar()
            took = time.monotonic() - self.started.get(stage, time.monotonic())
            self._print(f"✓ {stage}  {self.cache.get(stage, '')}  {took:.1f} s")
        elif kind == "STEP_FAILURE":
            self._close_bar()
            error = getattr(data, "error", None)
            while error is not None and error.cause is not None:  # Dagster wraps the stage's own exception
                error = error.cause
            message = error.message.strip() if error is not None else "see the run log"
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
    from newt.config import load_recipe

    recipe = load_recipe(args.recipe)  # recipe errors before Dagster is imported (seconds)
    # The Dagster layer is imported here and only here (and in `newt ui`): the core library never imports dagster.
    # definitions.py lives at the checkout root, beside newt/.
    sys.path.insert(0, str(ROOT))
    import dagster as dg

    from definitions import build_definitions
    from newt.pipeline import nodes

    known = nodes(recipe)  # the six stages plus quantized_<method> for each further quantize output
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(known)
    unknown = [s for s in stages if s not in known]
    if unknown:
        print(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(known)}", file=sys.stderr)
        return 2
    progress = Progress(recipe)
    defs = build_definitions(recipe_files=[Path(args.recipe)])
    # Our logger replaces Dagster's console logger: progress lines instead of every engine event.
    job = defs.resolve_job_def(f"{recipe.name}_job").with_logger_defs({"newt": _progress_logger(progress)})
    selection = [dg.AssetKey([recipe.name, s]) for s in stages]
    print(
        f"newt run {recipe.name}: {', '.join(stages)} → store {_store().root}",
        file=sys.stderr,
    )
    started = time.monotonic()
    # A persistent instance keeps the run in the UI's history; without DAGSTER_HOME the run is not recorded.
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        result = job.execute_in_process(
            run_config={"loggers": {"newt": {}}},
            instance=instance,
            raise_on_error=False,
            asset_selection=selection,
            tags={"newt/trigger": "cli"},
        )
    failed_checks = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    took = time.monotonic() - started
    if result.success and not failed_checks:
        print(f"newt run {recipe.name}: ok in {took:.1f} s (run {result.run_id})", file=sys.stderr)
        return 0
    what = [f"failed step(s): {', '.join(failed_steps)}"] if failed_steps else []
    what += [f"failed check(s): {', '.join(failed_checks)}"] if failed_checks else []
    print(
        f"newt run {recipe.name}: FAILED in {took:.1f} s ({'; '.join(what) or 'see above'}; run {result.run_id})",
        file=sys.stderr,
    )
    return 1


# --- chat ------------------------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    from newt import chat
    from newt.config import load_recipe

    recipe = load_recipe(args.recipe)
    try:
        return chat.run(recipe, args.stage, _store(), prompt=args.prompt, image=args.image,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    except chat.ChatError as exc:
        print(f"newt chat: {exc}", file=sys.stderr)
        return 1


# --- ui --------------------------------------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if not env.get("DAGSTER_HOME"):  # like `make ui`: run history inside the checkout, git-ignored
        home = ROOT / ".dagster_home"
        home.mkdir(exist_ok=True)
        if not (home / "dagster.yaml").exists():
            shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env["DAGSTER_HOME"] = str(home)
    if args.recipes:
        env["NEWT_RECIPES"] = str(Path(args.recipes).resolve())
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [
        str(dagster) if dagster.exists() else "dagster",
        "dev",
        "-w",
        str(ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
    ]
    print(
        f"newt ui: http://127.0.0.1:{args.port}  (DAGSTER_HOME={env['DAGSTER_HOME']}; Ctrl-C stops it)",
        file=sys.stderr,
    )
    # Replace this process: Ctrl-C and SIGTERM then reach dagster dev itself, which shuts down its children.
    # Both go back to their defaults first: started with `&` from a script, SIGINT arrives ignored, exec keeps it
    # ignored, and dagster dev (which handles SIGTERM like SIGINT) would then not stop (../shared/ENVIRONMENT.md).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(ROOT)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


# --- entry point -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="newt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a recipe")
    p.add_argument("recipe")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("plan", help="per stage: hit or miss, and what changed since the last artifact")
    p.add_argument("recipe")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("preview", help="trained and masked tokens of the first rows")
    p.add_argument("recipe")
    p.add_argument("-n", "--rows", type=int, default=3, help="rows to show (default 3)")
    p.add_argument("--split", choices=("train", "validation"), default="train")
    p.add_argument("--no-color", action="store_true", help="mark trained text with ⟦…⟧ instead of colors")
    p.set_defaults(fn=cmd_preview)
    p = sub.add_parser("run", help="materialize the recipe in this process (no UI)")
    p.add_argument("recipe")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("chat", help="talk to a stage's model (streams; --prompt answers once)")
    p.add_argument("recipe")
    p.add_argument("--stage", default="merged", help="base, trained, merged (default), quantized or quantized_<method>")
    p.add_argument("--prompt", help="answer this one message and exit (default: an interactive loop)")
    p.add_argument("--image", help="image file sent with the first message (vision-language recipes)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
    p.set_defaults(fn=cmd_chat)
    p = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--recipes", help="recipes folder (default: NEWT_RECIPES or the checkout's recipes/)")
    p.set_defaults(fn=cmd_ui)
    args = parser.parse_args(argv)
    from newt.config import RecipeError

    try:
        return args.fn(args)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
