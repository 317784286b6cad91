"""The sweep's results: a row per trial, the best trial and the Pareto front, the results table, Optuna's
parameter importances, and the MLflow reconciliation (no child run is left RUNNING)."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def trial_label(key: str) -> str:
    """A trial's short name from its key: ``t<N>`` for an Optuna trial number (``0003`` -> ``t3``); a Ray trial id
    (random hex) names itself (Ray trials get their ``t<N>`` from :func:`.ray_backend.trial_name`)."""
    return f"t{int(key)}" if key.isdigit() else key


def label_of(row: dict) -> str:
    """A results row's short name (``t3``), as its run's name starts."""
    return row.get("label") or trial_label(row["trial"])


NAME_PARAMS = 3  # searched hyperparameters shown in a trial's run name (all of them are its params)


def searched(space) -> list[str]:
    """The names of the space's sampled (not fixed) hyperparameters, in its order."""
    return [p.name for p in space.params if p.dist != "fixed"]


def trial_run_name(label: str, params: dict, names, method: str, task: str) -> str:
    """What tells trials apart first: ``t3 lr=4.43e-06 eps=0.001 mezo sst2``: the searched hyperparameters
    ``names`` the trial has (at most :data:`NAME_PARAMS`, then ``…``)."""
    from zoplatform.tracking import format_param

    names = [n for n in names if n in params]
    shown = [f"{n}={format_param(params[n])}" for n in names[:NAME_PARAMS]] + (["…"] if len(names) > NAME_PARAMS
                                                                                else [])
    return " ".join([label, *shown, method, task])


def best_metric(metric: str) -> str:
    """The parent run's name for the best trial's value of ``metric`` (``best_dev_accuracy`` stays itself)."""
    return metric if metric.startswith("best_") else f"best_{metric}"


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
    return {"trial": key, "label": m.get("trial_label") or trial_label(key), "status": status, "params": params,
            "best_dev_accuracy": num("best_dev_accuracy"), "dev_loss": num("dev_loss"),
            "forward_passes": fp, "test_accuracy": num("test_accuracy"),
            "mlflow_run_id": m.get("mlflow_run_id"), "trial_dir": str(trial_dir), "curve": curve,
            **({"error": str(m["error"])[:500]} if status == "failed" and m.get("error") else {})}


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


METRICS = ("best_dev_accuracy", "dev_loss", "forward_passes", "test_accuracy")


def write_table(rows: list[dict], space, path: Path, objectives=(("acc", "best_dev_accuracy", "max"),)) -> Path:
    """results.csv, a row per trial: the objective column(s) first, then the trial id, the hyperparameters,
    the status, the other metrics and the MLflow run id."""
    first = [m for _, m, _ in objectives]
    rest = [m for m in METRICS if m not in first]

    def val(v):
        return "" if v is None else v

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*first, "trial", *space.names, "status", *rest, "mlflow_run_id"])
        for r in rows:
            w.writerow([*[val(r.get(m)) for m in first], r["trial"], *[r["params"].get(n, "") for n in space.names],
                        r["status"], *[val(r.get(m)) for m in rest], val(r.get("mlflow_run_id"))])
    return path


def ranked(rows: list[dict], objectives) -> list[dict]:
    """Rows best first on the first objective (ties: fewer forward passes); rows without a value last."""
    _, metric, mode = objectives[0]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0),
                                       r.get("forward_passes") or 0.0))


def _cell(v) -> str:
    from zoplatform.tracking import format_param

    return "" if v is None or v == "" else format_param(v).replace("|", "\\|")


def results_markdown(rows: list[dict], space, objectives, *, title: str | None, best: dict | None,
                     front: list[dict] | None = None, about: str = "", importances_note: str | None = None) -> str:
    """results.md, the sweep parent's description: the trials ranked by the objective as a table (the
    searched hyperparameters, status, forward passes, test accuracy), then the best trial; ``title`` (a heading)
    first unless None."""
    names = searched(space)
    obj = [m for _, m, _ in objectives]
    on_front = {r["trial"] for r in front or []}
    tail = [c for c in ("forward_passes", "test_accuracy") if c not in obj]
    head = ["rank", *obj, "trial", *names, "status", *tail]
    lines = ([f"## {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(ranked(rows, objectives), 1):
        label = label_of(r) + (" ★" if r["trial"] in on_front else "")
        cells = [str(i), *[_cell(r.get(m)) for m in obj], label, *[_cell(r["params"].get(n)) for n in names],
                 r["status"].replace("_", " "), *[_cell(r.get(c)) for c in tail]]
        lines.append("| " + " | ".join(cells) + " |")
    objs = ", ".join(f"{m} ({'higher' if d == 'max' else 'lower'} is better)" for _, m, d in objectives)
    lines += ["", f"Ranked by {objs}" + ("; ★ = Pareto front" if on_front else "") + "."]
    if best is not None:
        lines += ["", f"Best: **{label_of(best)}** (trial {best['trial']}); its config is the "
                     f"artifact `best_config.yaml`: `zo finetune --config best_config.yaml`."]
    if importances_note:
        lines += ["", f"Parameter importances: not computed: {importances_note}."]
    if about:
        lines += ["", about]
    return "\n".join(lines) + "\n"


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


MIN_SAMPLED = 5  # trials the sampler chose (not the space's defaults) that importances need at the least


def is_default(row: dict, space) -> bool:
    """The trial ran one of the space's ``defaults`` (enqueued before the sampler takes over), not a sampled
    point."""
    import search_spaces

    fixed = {p.name for p in space.params if p.dist == "fixed"}
    params = {k: v for k, v in row["params"].items() if k not in fixed}
    return any(params == p for p in search_spaces.to_points(space))


def importances(rows: list[dict], space, objectives) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) of the first objective over the rows; a ValueError (the reason)
    when they would mean nothing: fewer than :data:`MIN_SAMPLED` trials that the sampler chose (the space's
    defaults are hand-picked points, not a sample of the space), or a constant objective."""
    import optuna

    import search_spaces

    _, metric, mode = objectives[0]
    scored = [r for r in rows if r.get(metric) is not None and r["status"] != "failed"]
    sampled = [r for r in scored if not is_default(r, space)]
    if len(sampled) < MIN_SAMPLED:
        n_def = len(scored) - len(sampled)
        raise ValueError(f"only {len(sampled)} of the {len(scored)} trials with a {metric} were chosen by the "
                         f"sampler ({n_def} ran the space's defaults); importances need at least {MIN_SAMPLED} "
                         f"sampled trials (run more --trials)")
    values = [r[metric] for r in scored]
    if len(values) < 2:
        raise ValueError(f"fewer than 2 trials with a {metric}")
    if len(set(values)) == 1:
        raise ValueError("objective constant")
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
        raise ValueError("fewer than 2 trials in the space")
    return dict(optuna.importance.get_param_importances(study))


