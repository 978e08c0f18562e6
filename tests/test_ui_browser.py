"""The Dagster UI in a real browser: `newt ui` serves a materialized tiny recipe, headless Chromium looks at it.

Chromium is driven over the DevTools protocol from Python (`websockets`, which dagster-webserver already installs)
rather than Playwright: no npm package, no browser download, and nothing to keep in step with Chromium's version.
Screenshots go to bench/out/ui/ (git-ignored). Every process is stopped by its PID (../shared/ENVIRONMENT.md:
Dagster handles SIGTERM like SIGINT; `newt ui` sets both back to their defaults before it execs dagster dev).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_run import tiny_run

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "bench" / "out" / "ui"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        message = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " — required under CI=true")
        pytest.skip("SKIPPED LOUDLY: " + message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM by PID; dagster dev then stops its webserver, daemon and code server (≈2 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session (start_new_session): its leftovers only
            proc.wait(5)


def graphql(port: int, query: str, timeout: float = 10) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate, read the page's text, take a screenshot."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def text(self) -> str:
        result = self.call(
            "Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True
        )
        return result["result"].get("value", "")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, *needles: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"page never showed {missing}; it showed:\n{text[:3000]}")

    def click_text(self, label: str) -> bool:
        """Click the first button or link whose text is `label` (the UI's own controls)."""
        script = (
            "(() => { const el = [...document.querySelectorAll('button, a, [role=tab], span')]"
            f".find(e => e.innerText && e.innerText.trim() === {json.dumps(label)});"
            " if (!el) return false; el.click(); return true; })()"
        )
        return bool(
            self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value")
        )

    def scroll_to_row(self, row_label: str) -> None:
        """Bring the metadata table row whose key is `row_label` into view (for the screenshot)."""
        script = (
            "(() => { const row = [...document.querySelectorAll('tr')]"
            f".find(r => r.cells.length && r.cells[0].innerText.trim() === {json.dumps(row_label)});"
            " if (!row) return false; row.scrollIntoView({block: 'start'}); return true; })()"
        )
        assert self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value"), (
            row_label
        )
        time.sleep(0.5)

    def click_in_row(self, row_label: str, label: str) -> bool:
        """Click the link or button reading `label` in the metadata table row whose key is `row_label` (the
        innermost element: a click on a wrapper never reaches the link's own handler)."""
        script = (
            "(() => { const row = [...document.querySelectorAll('tr')]"
            f".find(r => r.cells.length && r.cells[0].innerText.trim() === {json.dumps(row_label)});"
            " const el = row && [...row.querySelectorAll('a, button')]"
            f".find(e => e.innerText.trim() === {json.dumps(label)});"
            " if (!el) return false; el.scrollIntoView({block: 'center'}); el.click(); return true; })()"
        )
        return bool(self.evaluate(script))

    def image(self, selector: str, timeout: float = 30) -> dict | None:
        """The first <img> matching `selector` once it has loaded: its intrinsic size (0 when the browser could
        not decode it) and its box on the page, scrolled into view; None when none loaded in time."""
        script = (
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el || !el.complete) return null; el.scrollIntoView({block: 'center'});"
            " const r = el.getBoundingClientRect();"
            " return {naturalWidth: el.naturalWidth, naturalHeight: el.naturalHeight,"
            " x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(script):
                time.sleep(0.3)  # settle after the scroll, then read the box the screenshot will use
                return self.evaluate(script)
            time.sleep(0.5)
        return None

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def rect(self, selector: str, index: int = 0) -> dict | None:
        """The `index`-th element matching `selector`, scrolled into view: its box on the page (CSS pixels)."""
        script = (
            f"(() => {{ const el = document.querySelectorAll({json.dumps(selector)})[{index}]; if (!el) return null;"
            " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )
        found = self.evaluate(script)
        time.sleep(0.3)
        return self.evaluate(script) if found else None

    def region(self, name: str, rect: dict) -> Path:
        """A screenshot of one box of the page."""
        clip = {k: rect[k] for k in ("x", "y", "width", "height")} | {"scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip)["data"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture
def ui() -> Iterator[tuple[int, object]]:
    """`newt ui` on a free loopback port over the session's materialized tiny recipe; stopped by PID."""
    browser = chromium()  # before anything slow: fail or skip at once
    run = tiny_run()
    assert run.rc == 0, f"newt run failed:\n{run.stderr[-3000:]}"
    port = free_port()
    env = {**os.environ, **run.env()}
    log = open(run.root / "dagster_dev.log", "w")  # noqa: SIM115 - open for the server's lifetime, closed below
    # `newt ui` resets SIGINT/SIGTERM to their defaults and execs dagster dev: this PID is dagster dev's.
    proc = subprocess.Popen(
        [sys.executable, "-m", "newt.cli", "ui", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    profile = tempfile.mkdtemp(prefix="newt-chromium-")
    chrome = None
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine: dagster dev has taken over 60 s
        while True:
            try:
                nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
                if len(nodes) >= 6:
                    break
            except (OSError, KeyError, TypeError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"dagster dev did not serve the recipe: {(run.root / 'dagster_dev.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        # The "Join the Dagster community" modal covers a localhost UI until dismissed (ENVIRONMENT.md).
        assert "errors" not in graphql(port, "mutation { setNuxSeen }")
        chrome = subprocess.Popen(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        active = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not active.exists() or not active.read_text().strip():
            assert time.monotonic() < deadline and chrome.poll() is None, "chromium did not open DevTools"
            time.sleep(0.2)
        cdp_port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        yield port, tools
        tools.ws.close()
    finally:
        if chrome is not None:
            stop(chrome, timeout=10)
        stop(proc)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def struck_through(path: Path) -> bool:
    """Whether a screenshot of one line of text has a strike line: a pixel row in its middle half that is dark
    across (almost) the whole width. Bold or plain letters leave gaps between glyphs on every row."""
    from PIL import Image  # matplotlib's dependency

    image = Image.open(path).convert("L")
    width, height = image.size
    pixels = image.load()
    return any(sum(pixels[x, y] < 140 for x in range(width)) >= 0.9 * width
               for y in range(height // 4, 3 * height // 4 + 1))


@pytest.mark.slow
def test_the_ui_shows_the_recipe_group_mask_preview_and_evaluation_checks(ui) -> None:
    from definitions import build_definitions

    port, tools = ui
    base = f"http://127.0.0.1:{port}"
    run = tiny_run()
    checks = sorted(k.name for k in build_definitions(run.recipes).resolve_asset_graph().asset_check_keys)
    assert checks == ["eval_thresholds"], "only the gate the recipe sets is a check"

    # the recipe's asset group (file tiny.yml → group tiny): its six stages in the lineage graph
    tools.goto(f"{base}/locations/newt/asset-groups/tiny")
    tools.wait_for("Asset Group in", "dataset", "prepared", "trained", "merged", "quantized", "evaluation")
    time.sleep(2)  # the nodes' materialization status arrives after their names
    tools.screenshot("1-group-tiny")

    # the prepared asset: the mask preview, trained text bold and masked text struck through, and the audit
    tools.goto(f"{base}/assets/tiny/prepared")
    text = tools.wait_for("mask_preview", "Row 0", "supervised", "audit", "sampled_rows", "rows_train")
    assert "assistant" in text and "rows_rows_in" not in text
    tools.scroll_to_row("mask_preview")
    tools.screenshot("2-prepared-mask-preview")
    # [0] of each is the legend's; [1] the first row's (a GFM strikethrough renders as <del>)
    # (each region is captured right after scrolling to it: scrolling to the next one moves the page)
    trained = tools.rect("td strong", 1)
    assert trained and trained["width"] > 20, trained
    assert not struck_through(tools.region("2a-trained-text", trained))
    masked = tools.rect("td del", 1)
    assert masked and masked["width"] > 20, masked
    assert struck_through(tools.region("2b-masked-text", masked))
    legend_fits = tools.evaluate(
        "(() => { const d = document.querySelector('td del'); const box = d && d.closest('td');"
        " const r = d && d.getBoundingClientRect(); const b = box && box.getBoundingClientRect();"
        " return !!b && r.right <= b.right && d.closest('p').scrollWidth <= d.closest('p').clientWidth + 1; })()")
    assert legend_fits, "the legend is cut off"
    tools.scroll_to_row("audit")
    tools.screenshot("3-prepared-masking-report")

    # the trained asset: the loss over the whole run as a picture, inline (a sparkline PNG: the UI shows markdown
    # of under 1,000 characters in the table), and the full matplotlib chart in the loss_chart dialog
    tools.goto(f"{base}/assets/tiny/trained")
    tools.wait_for("loss_curve", "train loss", "· steps 1–3", "loss_chart", "loss_curve_png", "loss_history")
    inline = tools.image("td img[alt='loss over steps']")
    assert inline and inline["naturalWidth"] >= 120 and inline["width"] > 0 and inline["height"] > 0, inline
    tools.region("4a-trained-loss-sparkline", inline)
    summary_fits = tools.evaluate(
        "(() => { const p = [...document.querySelectorAll('td p')].find(e => e.innerText.startsWith('train loss'));"
        " return !!p && p.scrollWidth <= p.clientWidth + 1 && p.getBoundingClientRect().right"
        " <= p.closest('td').getBoundingClientRect().right; })()")
    assert summary_fits, "the loss summary is cut off"
    tools.scroll_to_row("loss_curve")
    tools.screenshot("4-trained-loss-curve")
    assert tools.click_in_row("loss_chart", "[Show Markdown]")
    chart = tools.image("[role=dialog] img[alt^='train loss']", timeout=10)
    assert chart and (chart["naturalWidth"], chart["naturalHeight"]) == (640, 320) and chart["width"] > 0, chart
    tools.region("4b-trained-loss-chart", chart)
    tools.screenshot("4c-trained-loss-chart-dialog")

    # the evaluation asset: metrics per model variant as a typed table and as markdown
    tools.goto(f"{base}/assets/tiny/evaluation")
    tools.wait_for("results_table", "merged/exact_match", "quantized/loss", "base/perplexity")
    tools.scroll_to_row("results_table")
    tools.screenshot("5-evaluation-table")

    # its checks: the configured gate with its verdict
    tools.goto(f"{base}/assets/tiny/evaluation?view=checks")
    text = tools.wait_for(*checks, "Passed")
    assert f"Checks ({len(checks)})" in text and "eval_regression" not in text
    assert tools.click_text("[Show Markdown]"), "the check's verdicts"
    tools.wait_for("merged loss = ", "(needs <= 100.0)")
    time.sleep(1)  # the dialog fades in
    tools.screenshot("6-evaluation-checks")


def test_a_missing_chromium_fails_under_ci_and_skips_loudly_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required under CI=true"):
        chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="SKIPPED LOUDLY: chromium is not installed"):
        chromium()
