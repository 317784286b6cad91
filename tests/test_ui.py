"""The MLflow UI check a person would otherwise do by hand (issue 19), marked ``ui``.

A tiny store is made with the real commands (``zo finetune``, ``zo compare``, ``zo sweep`` (Optuna backend) and
``zo meta-train --register`` on ``tiny:llama``, SQLite);
``mlflow ui`` is started with the command they print; then

* through the REST API: run names, params (one name each, resolved values), one-off results as step-0 metrics,
  no constant lr, run and experiment descriptions, and that the printed links' experiments hold the runs;
* in headless Chromium (Debian's ``chromium``, driven over the DevTools protocol on a pipe; skipped when it is not
  installed, which ``.ci/run`` avoids by installing it when it can): each printed page is opened and *waited on*
  until what a person looks for is shown (the runs listed, the description, the trials; on the metrics page every
  metric's card, each on-screen chart drawn with points or bars, and a screenshot that is not white-and-spinners),
  then screenshotted (``$ZO_UI_SHOTS`` or the test's tmp dir; ``scripts/ui_check.sh`` keeps them). A page that
  never gets there fails, saying what it showed.

About 2-4 minutes on 2 cores (two tiny commands, one UI start); ``-m "not ui"`` leaves it out.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DATA, needs_data, wait_healthy

pytestmark = [pytest.mark.ui, needs_data]  # every test reads the store built from task data


SIZES = ["--model", "tiny:llama", "--batch-size", "8", "--num-train", "32", "--num-dev", "16", "--num-test", "16"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zo(args: list[str], cwd: Path, env: dict) -> tuple[dict, str]:
    """Run a ``zo`` command as a user would; (its JSON summary, its stderr)."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--json"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _printed(stderr: str, what: str) -> str:
    """The URL a command printed on the line ``MLflow <what>: URL``."""
    m = re.search(rf"^MLflow {what}: (\S+)", stderr, re.MULTILINE)
    assert m, f"no 'MLflow {what}:' line in:\n{stderr[-2000:]}"
    return m.group(1)


def _get(base: str, path: str, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _search(base: str, experiment_id: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()).get("runs", [])


def _kv(items: list[dict] | None) -> dict:
    return {x["key"]: x["value"] for x in items or []}


def _exp_id(link: str) -> str:
    m = re.search(r"#/experiments/(\d+)/runs", link)
    assert m, link
    return m.group(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny store, the printed links, and a running ``mlflow ui`` (started with the printed command)."""
    root = tmp_path_factory.mktemp("ui_store")
    port = _free_port()
    env = {**os.environ, "ZO_MLFLOW_UI": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "ZO_DATA_DIR": str(DATA)}
    uri = f"sqlite:///{root}/mlflow.db"
    ft, ft_err = _zo(["finetune", *SIZES, "--task", "sst2", "--method", "curvzo", "--steps", "6", "--lr", "1e-3",
                      "--eps", "1e-2", "--eval-every", "3", "--tracking-uri", uri, "--out-dir", str(root / "ft")],
                     root, env)
    (root / "configs.yaml").write_text("mezo: {lr: 1.0e-3, eps: 1.0e-2}\n"
                                       "mezo-copy: {method: mezo, lr: 1.0e-3, eps: 1.0e-2}\n")
    cmp, cmp_err = _zo(["compare", *SIZES, "--methods", "mezo,mezo-copy", "--tasks", "sst2", "--seeds", "1",
                        "--forward-budget", "8", "--eval-points", "2", "--configs", str(root / "configs.yaml"),
                        "--out", str(root / "cmp"), "--tracking-uri", uri], root, env)
    sw, sw_err = _zo(["sweep", *SIZES, "--task", "sst2", "--method", "mezo", "--steps", "4", "--eval-every", "2",
                      "--backend", "optuna", "--trials", "3", "--max-concurrent", "1", "--scheduler", "none",
                      "--storage", str(root / "sweeps"), "--tracking-uri", uri], root, env)
    meta, meta_err = _zo(["meta-train", "--model", "tiny:llama", "--tasks", "copa", "--epochs", "1",
                          "--steps-per-epoch", "2", "--num-train", "8", "--num-dev", "4", "--batch-size", "4",
                          "--register", "--tracking-uri", uri, "--out-dir", str(root / "meta")], root, env)
    start = re.search(r"start the UI first: (.+?)\)?$", ft_err, re.MULTILINE)
    assert start, ft_err[-2000:]
    argv = shlex.split(start.group(1))
    if argv[0] == "mlflow" and not shutil.which("mlflow"):
        argv[0] = str(Path(sys.executable).parent / "mlflow")
    assert f"--port {port}" in start.group(1) and uri in argv
    ui = subprocess.Popen([*argv, "--workers", "1"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, ui, 180, "mlflow ui")
        yield {"base": base, "ft": ft, "ft_err": ft_err, "cmp": cmp, "cmp_err": cmp_err, "sw": sw, "sw_err": sw_err,
               "meta": meta, "root": root}
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


def test_printed_links_open_the_runs_view_of_the_runs_experiments(store):
    base, ft, cmp = store["base"], store["ft"], store["cmp"]
    for summary, err, what in ((ft, store["ft_err"], "run"), (cmp, store["cmp_err"], "comparison")):
        links = summary["mlflow_ui"]
        run_id = summary["mlflow_run_id"] if what == "run" else summary["parent_run_id"]
        assert links["runs"].startswith(f"{base}/#/experiments/") and links["runs"].endswith(
            "/runs?workflowType=machine_learning")
        assert links["run"] == links["runs"].replace("/runs?", f"/runs/{run_id}?")
        assert _printed(err, what) == links["run"] and _printed(err, "runs") == links["runs"]
        # the experiment the printed link opens holds the run
        assert run_id in {r["info"]["run_id"] for r in _search(base, _exp_id(links["runs"]))}


def test_names_params_summary_values_and_notes_through_the_rest_api(store):
    base, ft, cmp = store["base"], store["ft"], store["cmp"]
    run = _get(base, "runs/get", run_id=ft["mlflow_run_id"])["run"]
    info, params, tags = run["info"], _kv(run["data"].get("params")), _kv(run["data"].get("tags"))
    metrics = {m["key"]: m for m in run["data"].get("metrics", [])}
    assert info["run_name"] == "curvzo sst2 s0 tiny:llama"
    # one name per quantity, resolved, readable: the method's config at top level, no copies
    assert params["lr"] == "0.001" and params["eps"] == "0.01" and params["direction"] == "gaussian"
    assert params["budget_every"] == "20" and params["protocol"] == "prompt" and params["precision"] == "fp32"
    assert not [k for k in params if k.startswith(("method_config.", "method_options."))]
    assert "None" not in params.values()
    # one-off results at step 0 (a value, not a dot on a step axis); no per-step lr under a constant schedule
    for k in ("test_accuracy", "zero_shot_test_accuracy", "wall_time_s", "peak_memory_mb", "best_dev_accuracy"):
        assert metrics[k]["step"] in (0, "0"), k
    assert float(metrics["test_accuracy"]["value"]) == pytest.approx(ft["test_accuracy"])
    assert "lr" not in metrics and "train_loss" in metrics
    hist = _get(base, "metrics/get-history", run_id=ft["mlflow_run_id"], metric_key="train_loss")["metrics"]
    assert len(hist) == 6
    note = tags["mlflow.note.content"]
    assert note.startswith("curvzo on sst2 (tiny:llama): 6 steps = 12 forward passes, test acc ")
    assert f"{100 * ft['test_accuracy']:.1f}%" in note and "zero-shot" in note and "best dev step" in note
    exp = _get(base, "experiments/get", experiment_id=info["experiment_id"])["experiment"]
    assert _kv(exp.get("tags"))["mlflow.note.content"].startswith("zoplatform fine-tunes")

    # the comparison: parent named by what it compares, its report as its description; children `label task s<k>`
    runs = _search(base, _exp_id(cmp["mlflow_ui"]["runs"]))
    by_id = {r["info"]["run_id"]: r for r in runs}
    parent = by_id[cmp["parent_run_id"]]
    assert parent["info"]["run_name"] == "compare mezo,mezo-copy on sst2 (tiny:llama)"
    pnote = _kv(parent["data"].get("tags"))["mlflow.note.content"]
    assert "Test accuracy (%)" in pnote and "| mezo-copy |" in pnote
    assert pnote.index("| method | sst2 |") < pnote.index("Model `tiny:llama`")  # the table first
    pm = {m["key"] for m in parent["data"].get("metrics", [])}
    assert {"test_accuracy/mezo/sst2", "final_dev_loss/mezo-copy/sst2", "peak_memory_mb/mezo"} <= pm
    kids = [r for r in runs if _kv(r["data"].get("tags")).get("mlflow.parentRunId") == cmp["parent_run_id"]]
    assert sorted(k["info"]["run_name"] for k in kids) == ["mezo sst2 s0", "mezo-copy sst2 s0"]
    for k in kids:
        kp = _kv(k["data"].get("params"))
        assert kp["lr"] == "0.001" and kp["eps"] == "0.01"  # the label's values, never "None"
        assert _kv(k["data"].get("tags"))["mlflow.note.content"].startswith("mezo on sst2 (tiny:llama): 4 steps")
    cexp = _get(base, "experiments/get", experiment_id=_exp_id(cmp["mlflow_ui"]["runs"]))["experiment"]
    assert _kv(cexp.get("tags"))["mlflow.note.content"].startswith("zoplatform method comparisons")


def test_sweep_and_registry_explain_themselves_through_the_rest_api(store):
    base, sw, meta = store["base"], store["sw"], store["meta"]
    # the printed sweep link opens the parent; the runs view lists it and its trials
    links = sw["mlflow_ui"]
    assert _printed(store["sw_err"], "sweep") == links["run"] and _printed(store["sw_err"], "runs") == links["runs"]
    runs = _search(base, _exp_id(links["runs"]))
    by_id = {r["info"]["run_id"]: r for r in runs}
    parent = by_id[sw["parent_run_id"]]
    assert parent["info"]["run_name"] == "sweep mezo on sst2 (tiny:llama)"
    ptags = _kv(parent["data"].get("tags"))
    assert ptags["zo.sweep"] == "mezo-sst2-tiny_llama"
    note = ptags["mlflow.note.content"]
    assert note.startswith("| rank | best_dev_accuracy | trial | lr | eps | status |") and note.count("\n| ") == 3
    pm = {m["key"]: float(m["value"]) for m in parent["data"].get("metrics", [])}
    assert pm["best_dev_accuracy"] == pytest.approx(sw["best"]["best_dev_accuracy"])
    assert "best_best_dev_accuracy" not in pm
    trials = [r for r in runs if _kv(r["data"].get("tags")).get("mlflow.parentRunId") == sw["parent_run_id"]]
    assert sorted(t["info"]["run_name"].split()[0] for t in trials) == ["t0", "t1", "t2"]
    for t in trials:
        assert re.fullmatch(r"t\d lr=\S+ eps=\S+ mezo sst2", t["info"]["run_name"]), t["info"]["run_name"]
        assert f"| {t['info']['run_name'].split()[0]} |" in note  # the note names the trials as the table does
        hist = _get(base, "metrics/get-history", run_id=t["info"]["run_id"],
                    metric_key="objective.best_dev_accuracy")["metrics"]
        assert sorted(int(m.get("step", 0)) for m in hist) == [0, 2, 4]
    # the registered policy version: its card, the verdict and the usage line
    reg = meta["registered"]
    mv = _get(base, "model-versions/get", name=reg["name"], version=reg["version"])["model_version"]
    usage = "zo finetune --model tiny:llama --method zo-finetuner --policy models:/zo-policy-tiny_llama@champion"
    assert usage in mv["description"] and "- **quality**: " in mv["description"]
    assert ("untrained: ω moved" if meta["policy_rel_change"] < 1e-3 else "trained: ω moved") in mv["description"]


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3/4, no
    websocket library, no driver download), so a check can *wait* for what a person would see (charts drawn, rows
    listed) instead of screenshotting whatever a fixed time budget left (nine loading spinners, issue 40)."""

    def __init__(self, timeout_s: float = 60.0):
        import fcntl

        def high(fd: int) -> int:  # out of the way of 3/4
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return new

        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory()
        r_in, self._w = map(high, os.pipe())  # we write, Chromium reads fd 3
        self._r, w_out = map(high, os.pipe())  # Chromium writes fd 4

        def child():
            os.dup2(r_in, 3)
            os.dup2(w_out, 4)

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}",
                                      "--remote-debugging-pipe", "about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=child,
                                     close_fds=False, start_new_session=True)
        os.close(r_in)
        os.close(w_out)
        self._buf, self._id = b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import select
        import time

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}} | ({"sessionId": session} if session else {})
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"chromium {method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {self.timeout_s:.0f} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.proc.poll()}) during {method}")
            self._buf += chunk

    def open(self, url: str, size: str, ready: str, what: str, wait_s: float = 45.0) -> Page:
        """Open ``url`` in a fresh browser context (no storage: what a first-time visitor sees) at ``size``
        ("W,H"); poll the JS expression ``ready`` until it is true; AssertionError with what the page showed when
        it is not within ``wait_s``."""
        w, h = map(int, size.split(","))
        ctx = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": ctx})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, ctx)
        self.send("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        try:
            page.wait(ready, f"{what} ({url})", wait_s)
        except AssertionError:
            page.close()
            raise
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self._profile.cleanup()


@dataclass
class Page:
    browser: Browser
    session: str
    context: str

    def wait(self, ready: str, what: str, wait_s: float = 45.0) -> None:
        """Poll the JS expression ``ready`` until it is true; AssertionError with what the page showed when it is
        not within ``wait_s``."""
        import time

        deadline = time.monotonic() + wait_s
        while not self.eval(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                text = self.eval("document.body ? document.body.innerText : ''") or ""
                raise AssertionError(f"{what}: not shown within {wait_s:.0f} s (page text: "
                                     f"{' '.join(text.split())[:600]!r})")
            time.sleep(0.3)
        time.sleep(0.5)  # let the last frame paint

    def eval(self, expression: str):
        res = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                self.session)
        return res["result"].get("value")

    def dom(self) -> str:
        return self.eval("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.browser.send("Page.captureScreenshot", {"format": "png"},
                                                            self.session)["data"]))

    def close(self) -> None:
        self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context})


def text_has(*texts: str) -> str:
    """A ``ready`` expression: the page's visible text holds every one of ``texts``."""
    return " && ".join(f"document.body && document.body.innerText.includes({json.dumps(t)})" for t in texts)


# The metric charts of a run page (MLflow 3.17): a card per metric (title in its h4), in a grid that puts only the
# cards near the screen in the page; a card draws its plotly chart only once on screen, with a trace of points (line
# charts) or bars (step-0 values); until then it is a loading spinner.
CARDS = "[...document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]')]"
SCROLLER = """(el => { for (let p = el.parentElement; p; p = p.parentElement) {
  const o = getComputedStyle(p).overflowY;
  if ((o === 'auto' || o === 'scroll') && p.scrollHeight > p.clientHeight) return p; }
  return document.scrollingElement; })"""
# on screen: within the window and within the grid's scrolling box (cards below its fold are in the page already)
ON_SCREEN = f"""(c => {{ const r = c.getBoundingClientRect(), b = {SCROLLER}(c).getBoundingClientRect();
  return r.width > 0 && r.bottom > Math.max(b.top, 0) && r.top < Math.min(b.bottom, innerHeight); }})"""
CHART_STATE = f"""(() => {{
  const cards = {CARDS}.filter({ON_SCREEN});
  const drawn = c => !!c.querySelector('.js-plotly-plot .scatterlayer .trace .point, .js-plotly-plot .barlayer .point');
  const title = c => (c.querySelector('h4') || {{}}).textContent;
  return {{on_screen: cards.map(title), drawn: cards.filter(drawn).map(title)}};
}})()"""
CHARTS_DRAWN = f"(s => s.on_screen.length > 0 && s.drawn.length === s.on_screen.length)({CHART_STATE})"
# scroll the grid's box on by a screen less a margin (no row skipped); true when it is already at the end
NEXT_SCREEN = f"""(() => {{ const c = {CARDS}[0], s = c && {SCROLLER}(c); if (!s) return true;
  const before = s.scrollTop; s.scrollBy(0, s.clientHeight - 80); return s.scrollTop === before; }})()"""


def drawn_charts(page: Page, metrics: set[str], what: str, first_screen: Path, wait_s: float = 45.0) -> list[str]:
    """The metrics whose chart a person scrolling down the charts page sees drawn: a screen at a time, wait until
    every card on it has drawn and the screen has settled (the grid adds cards as it scrolls), screenshot the first
    screen to ``first_screen``; AssertionError naming the cards still loading when a screen does not settle within
    ``wait_s``."""
    import time

    seen: list[str] = []
    for screen in range(20):
        deadline, last, same = time.monotonic() + wait_s, None, 0
        while same < 2:  # the same, fully drawn, three polls running
            time.sleep(0.4)
            state = page.eval(CHART_STATE)
            same = same + 1 if state["on_screen"] and state["drawn"] == state["on_screen"] and state == last else 0
            last = state
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: screen {screen + 1}: charts on screen {state['on_screen']}, drawn "
                                     f"after {wait_s:.0f} s only {state['drawn']}")
        if screen == 0:
            page.screenshot(first_screen)
        seen += [t for t in state["drawn"] if t not in seen]
        if metrics <= set(seen) or page.eval(NEXT_SCREEN):
            break
    return seen


def charts_problems(drawn: list[str], metrics: set[str], png: Path) -> list[str]:
    """What is wrong with a run's metric charts page as a person sees it (empty: nothing): a drawn chart per
    metric (``drawn``, from :func:`drawn_charts`), and a first screen (``png``) that shows them: a page still
    loading is grey outlines and spinners on white, under 1% coloured pixels; drawn charts are about 5%."""
    problems = []
    if set(drawn) != metrics:
        problems.append(f"charts drawn for {sorted(drawn)}, the run's metrics are {sorted(metrics)}")
    share = coloured_share(png)
    if share < 0.01:
        problems.append(f"the screenshot is {100 * share:.2f}% coloured pixels (drawn charts: ~5%; loading "
                        f"spinners: <1%)")
    return problems


def coloured_share(png: Path) -> float:
    """The share of the screenshot's pixels with a colour (max - min channel > 60): chart traces and bars, not the
    white/grey of an empty or loading page."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return float(((a.max(axis=2) - a.min(axis=2)) > 60).mean())


def shrink_png(path: Path, colors: int = 96) -> None:
    """An adaptive-palette PNG (screenshots of the UI are mostly flat colours: a fraction of the size)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium; .ci/run installs it when run as "
                    "root); the REST checks above still ran")
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def test_printed_links_in_a_real_browser_show_the_runs_and_drawn_charts_and_are_screenshotted(store, browser):
    ft, cmp, sw, meta = store["ft"], store["cmp"], store["sw"], store["meta"]
    base = store["base"]
    shots = Path(os.environ.get("ZO_UI_SHOTS") or store["root"] / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    reg = meta["registered"]
    metrics_url = ft["mlflow_ui"]["run"].replace("?", "/model-metrics?")
    trials = r"/t[0-2] lr=\S+ eps=\S+ mezo sst2/g"
    # name -> (url, window, shown when): each page is screenshotted once what a person looks for is on it
    pages = {
        "experiments": (f"{base}/#/experiments", "1400,900", text_has("zo-finetune", "zo-compare")),
        # the printed runs links list the runs (the parent rows; children are folded under them) in the runs
        # table ("Model training" layout), not the GenAI traces overview
        "finetune_runs": (ft["mlflow_ui"]["runs"], "1400,900", text_has("curvzo sst2 s0 tiny:llama", "Run Name")),
        "finetune_run": (ft["mlflow_ui"]["run"], "1300,1500",
                         text_has("curvzo sst2 s0 tiny:llama", "curvzo on sst2 (tiny:llama): 6 steps")),
        "finetune_metrics": (metrics_url, "1300,1300", CHARTS_DRAWN),
        "compare_runs": (cmp["mlflow_ui"]["runs"], "1400,900",
                         text_has("compare mezo,mezo-copy on sst2 (tiny:llama)", "Run Name")),
        "compare_parent": (cmp["mlflow_ui"]["run"], "1300,1500",
                           text_has("compare mezo,mezo-copy on sst2 (tiny:llama)", "Test accuracy (%)")),
        "sweep_runs": (sw["mlflow_ui"]["runs"], "1400,900", text_has("sweep mezo on sst2 (tiny:llama)")),
        "sweep_parent": (sw["mlflow_ui"]["run"], "1300,1500",
                         text_has("sweep mezo on sst2 (tiny:llama)", "rank", "best_dev_accuracy")),
        # the printed trials link: the sweep's trials alone, as rows, with the objective column
        "sweep_trials": (sw["mlflow_ui"]["trials"], "1400,900",
                         f"new Set(document.body.innerText.match({trials}) || []).size === 3 && "
                         + text_has("objective.best_dev_accuracy")),
        "registry_version": (f"{base}/#/models/{reg['name']}/versions/{reg['version']}", "1300,1100",
                             text_has("models:/zo-policy-tiny_llama@champion")),
    }
    run = _get(base, "runs/get", run_id=ft["mlflow_run_id"])["run"]
    metric_names = {m["key"] for m in run["data"]["metrics"] if not m["key"].startswith("system/")}
    for name, (url, size, ready) in pages.items():
        page = browser.open(url, size, ready, name)
        try:
            png = shots / f"{name}.png"
            if name == "finetune_metrics":  # its first screen's picture, then on through the charts
                problems = charts_problems(drawn_charts(page, metric_names, name, png), metric_names, png)
                assert not problems, f"{url}: " + "; ".join(problems)
            else:
                page.screenshot(png)
        finally:
            page.close()
        shrink_png(png)
    print(f"screenshots in {shots}", file=sys.stderr)
