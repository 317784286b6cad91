"""The MLflow UI check a person would otherwise do by hand (issue 19), marked ``ui``.

A tiny store is made with the real commands (``zo finetune``, ``zo compare``, ``zo sweep`` (Optuna backend) and
``zo meta-train --register`` on ``tiny:llama``, SQLite);
``mlflow ui`` is started with the command they print; then

* through the REST API: run names, params (one name each, resolved values), one-off results as step-0 metrics,
  no constant lr, run and experiment descriptions, and that the printed links' experiments hold the runs;
* in headless Chromium (Debian's ``chromium``; skipped when it is not installed): the printed runs link's page
  lists the runs (its DOM), and screenshots of the printed links are saved (``$ZO_UI_SHOTS`` or the test's
  tmp dir; ``scripts/ui_check.sh`` keeps them).

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
from pathlib import Path

import pytest

import zoplatform
from tests.conftest import wait_healthy
from zoplatform.data import resolve_data_dir

pytestmark = pytest.mark.ui

try:
    DATA = resolve_data_dir(None)
except zoplatform.ZOError:  # pragma: no cover
    DATA = None

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
    if DATA is None:
        pytest.skip("../shared/data not found")
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


def _chromium(url: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: what a first-time visitor sees
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout, check=False)


def shrink_png(path: Path, colors: int = 96) -> None:
    """An adaptive-palette PNG (screenshots of the UI are mostly flat colours: a fraction of the size)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium); the "
                                             "REST checks above still ran")
def test_printed_links_in_a_real_browser_list_the_runs_and_are_screenshotted(store):
    ft, cmp = store["ft"], store["cmp"]
    # the printed runs link's page lists the runs (the parent rows; children are folded under them)
    for links, name in ((ft["mlflow_ui"], "curvzo sst2 s0 tiny:llama"),
                        (cmp["mlflow_ui"], "compare mezo,mezo-copy on sst2 (tiny:llama)")):
        dom = _chromium(links["runs"], "--window-size=1400,900", "--virtual-time-budget=15000", "--dump-dom").stdout
        assert name in dom, f"{name!r} not on {links['runs']}"
        assert "Run Name" in dom  # the runs table ("Model training" layout), not the GenAI traces overview
    # the printed trials link: the sweep's trials alone, as rows, sorted by the objective
    dom = _chromium(store["sw"]["mlflow_ui"]["trials"], "--window-size=1400,900", "--virtual-time-budget=15000",
                    "--dump-dom").stdout
    assert len(set(re.findall(r"t[0-2] lr=[^<]* mezo sst2", dom))) == 3 and "objective.best_dev_accuracy" in dom
    shots = Path(os.environ.get("ZO_UI_SHOTS") or store["root"] / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    pages = {"experiments": (f"{store['base']}/#/experiments", "1400,900"),
             "finetune_runs": (ft["mlflow_ui"]["runs"], "1400,900"),
             "finetune_run": (ft["mlflow_ui"]["run"], "1300,1500"),
             "finetune_metrics": (ft["mlflow_ui"]["run"].replace("?", "/model-metrics?"), "1300,1300"),
             "compare_runs": (cmp["mlflow_ui"]["runs"], "1400,900"),
             "compare_parent": (cmp["mlflow_ui"]["run"], "1300,1500"),
             "sweep_runs": (store["sw"]["mlflow_ui"]["runs"], "1400,900"),
             "sweep_parent": (store["sw"]["mlflow_ui"]["run"], "1300,1500"),
             "sweep_trials": (store["sw"]["mlflow_ui"]["trials"], "1400,900"),
             "registry_version": (f"{store['base']}/#/models/{store['meta']['registered']['name']}/versions/"
                                  f"{store['meta']['registered']['version']}", "1300,1100")}
    for name, (url, size) in pages.items():
        png = shots / f"{name}.png"
        _chromium(url, f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={png}")
        assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot of {url}"
        shrink_png(png)
    print(f"screenshots in {shots}", file=sys.stderr)
