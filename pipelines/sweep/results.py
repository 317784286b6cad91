"""The sweep's results: a row per trial, the best trial and the Pareto front, the results table, Optuna's
parameter importances, and the MLflow reconciliation (no child run is left RUNNING)."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tracking_client(uri: str):
    from zoplatform.tracking.mlflow import open_client

    return open_client(uri)


def reconcile_children(uri: str, parent_run_id: str, classify: Callable[[Any], tuple[str, str]]) -> int:
    """End every child run still RUNNING (a trial process that was stopped or
    killed cannot end its own run); returns how many were ended."""
    client = tracking_client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                            f"and attributes.status = 'RUNNING'", max_results=10000)
    for run in runs:
        end_child(client, run.info.run_id, *classify(run))
    return len(runs)




def end_child(client, run_id: str, status: str, reason: str, only_running: bool = False) -> None:
    """End a trial's run from the driver (FINISHED here means stopped early)."""
    if only_running and client.get_run(run_id).info.status != "RUNNING":
        return
    client.set_tag(run_id, "zo.end_reason", reason)
    if status == "FINISHED":
        client.set_tag(run_id, "zo.stopped_early", "true")
    client.set_terminated(run_id, status=status)


def dev_curve(trial_dir: Path) -> list[tuple[int, float]]:
    try:
        evals = json.loads((trial_dir / "state.json").read_text())["history"]["evals"]
        return [(int(e["forwards"]), float(e["dev_accuracy"])) for e in evals]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def make_row(key: str, params: dict, status: str, m: dict, trial_dir: Path) -> dict:
    def num(k):
        v = m.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    curve = dev_curve(trial_dir)
    fp = num("forward_passes")
    if fp is None and curve:
        fp = float(curve[-1][0])
    return {"trial": key, "status": status, "params": params,
            "best_dev_accuracy": num("best_dev_accuracy"), "dev_loss": num("dev_loss"),
            "forward_passes": fp, "test_accuracy": num("test_accuracy"),
            "mlflow_run_id": m.get("mlflow_run_id"), "trial_dir": str(trial_dir), "curve": curve}


def pareto_front(rows: list[dict], objectives) -> list[dict]:
    """Rows not dominated on every objective (rows missing a value are skipped)."""
    cand = [r for r in rows if all(r.get(m) is not None for _, m, _ in objectives)]

    def better_eq(a, b):
        return all((a[m] >= b[m]) if d == "max" else (a[m] <= b[m]) for _, m, d in objectives)

    return [r for r in cand if not any(better_eq(o, r) and any(o[m] != r[m] for _, m, _ in objectives)
                                       for o in cand if o is not r)]


def pick_best(rows: list[dict], objectives) -> dict | None:
    """The best trial on the first objective (ties: fewer forward passes); for
    several objectives, the Pareto-front member best on the first."""
    pool = pareto_front(rows, objectives) if len(objectives) > 1 else rows
    _, metric, mode = objectives[0]
    pool = [r for r in pool if r.get(metric) is not None and r["status"] != "failed"]
    if not pool:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(pool, key=lambda r: (sign * r[metric], -(r["forward_passes"] or 0.0)))


def write_table(rows: list[dict], space, path: Path) -> Path:
    cols = ["trial", "status", *space.names, "best_dev_accuracy", "dev_loss", "forward_passes", "test_accuracy",
            "mlflow_run_id"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r["trial"], r["status"], *[r["params"].get(n, "") for n in space.names],
                        *[("" if r[c] is None else r[c]) for c in cols[2 + len(space.names):]]])
    return path


class _Replay:
    """A stand-in trial for :func:`search_spaces.sample` that returns known values
    and records Optuna distributions, so finished rows become Optuna trials."""

    def __init__(self, values: dict):
        import optuna.distributions as D

        self.D, self.values, self.dists = D, values, {}

    def suggest_float(self, name, low, high, log=False, step=None):
        self.dists[name] = self.D.FloatDistribution(low, high, log=log, step=step)
        return self.values[name]

    def suggest_int(self, name, low, high, log=False, step=1):
        self.dists[name] = self.D.IntDistribution(low, high, log=log, step=step)
        return self.values[name]

    def suggest_categorical(self, name, choices):
        self.dists[name] = self.D.CategoricalDistribution(choices)
        return self.values[name]


def importances(rows: list[dict], space, objectives) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) of the first objective over the rows."""
    import optuna

    import search_spaces

    _, metric, mode = objectives[0]
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in rows:
        if r.get(metric) is None or r["status"] == "failed":
            continue
        rep = _Replay(r["params"])
        try:
            search_spaces.sample(space, rep)
        except KeyError:
            continue
        study.add_trial(optuna.trial.create_trial(params={k: r["params"][k] for k in rep.dists},
                                                  distributions=rep.dists, value=r[metric]))
    if len(study.trials) < 2:
        return {}
    return dict(optuna.importance.get_param_importances(study))


