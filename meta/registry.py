"""ZO Fine-tuner policies in the MLflow model registry.

One registered model per base model, ``zo-policy-<model>`` (the model id
sanitised: ``tiny:llama`` → ``zo-policy-tiny_llama``); each meta-training
run that registers adds a version and moves the alias ``champion`` to it.

How (MLflow 3): the policy directory (``policy.json`` + ``policy.safetensors``)
is logged as *run artifacts* under ``policy/`` of the meta-training run, and the
model version is created with ``source`` = that artifact URI and ``run_id``.
No pyfunc wrapper and no pickled Python object: the files are the model, and a
consumer downloads them with ``mlflow.artifacts.download_artifacts``.  This
works the same with a SQLite store (``file://`` artifacts) and with an
``mlflow server --artifacts-destination`` (``mlflow-artifacts:/`` URIs, proxied
over HTTP).  Stages are not used (deprecated); aliases are.

Resolution (:func:`resolve_policy`) accepts ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``runs:/RUN_ID/path``, any artifact URI, or a local
directory, and returns a local directory that ``zo-finetuner``'s ``policy``
option takes.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoplatform.errors import ConfigError

ALIAS = "champion"
ARTIFACT_DIR = "policy"
PREFIX = "zo-policy-"


def registered_name(model_id: str) -> str:
    """``zo-policy-<model>`` with every character outside ``[A-Za-z0-9_.-]`` turned into ``_``;
    a local path contributes its last component."""
    text = str(model_id).strip().rstrip("/")
    if text.startswith(("/", "./", "../", "~")):
        text = Path(text).name
    return PREFIX + (re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "model")


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    from zoplatform.tracking.mlflow import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


UNTRAINED_BELOW = 1e-3  # ||w - w0|| / ||w0|| under this: meta-training did not move the policy


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def measurable_tasks(measurable) -> dict[str, bool] | None:
    """``{task: measurable}`` from a mapping or its card spelling ``"copa=no,trec=yes"`` (None: unknown)."""
    if measurable is None or measurable == "":
        return None
    if isinstance(measurable, Mapping):
        return {str(k): bool(v) for k, v in measurable.items()}
    out = {}
    for item in str(measurable).split(","):
        task, _, v = item.strip().partition("=")
        if task:
            out[task] = v.strip().lower() in ("yes", "true", "1")
    return out or None


def measurable_text(measurable: Mapping[str, bool]) -> str:
    """The card spelling of per-task measurability: ``"copa=no,trec=yes"``."""
    return ",".join(f"{t}={'yes' if v else 'no'}" for t, v in measurable.items())


def policy_verdict(rel_change, meta_val_gain=None, measurable=None, selection=None) -> str:
    """A plain-words quality signal: ``untrained: ω moved 4.5e-07 relative`` below :data:`UNTRAINED_BELOW`,
    else ``trained: ω moved 0.31 relative``, then what meta-validation said.

    ``measurable`` (``{task: bool}`` or ``"copa=no,trec=yes"``): whether each meta task's held-out signal was
    measurable; when none was, the gain is noise and the verdict says "not measurable" instead of better or
    worse.  ``selection``: which epoch was kept (:func:`meta.metatrain.selection_note`); said when it was the
    initial policy."""
    rel, gain = _num(rel_change), _num(meta_val_gain)
    meas = measurable_tasks(measurable)
    if rel is None:
        moved = "movement unknown"
    elif rel < UNTRAINED_BELOW:
        moved = f"untrained: ω moved {rel:.2g} relative (under {UNTRAINED_BELOW:g}: it perturbs as the initial policy)"
    else:
        moved = f"trained: ω moved {rel:.2g} relative"
    if gain is None:
        val = "no meta-validation"
    elif meas is not None and not any(meas.values()):
        val = (f"meta-val not measurable: no meta task's held-out signal is measurable ({', '.join(meas)}), so "
               f"its gain {gain:+.3g} over σ = 1 says nothing either way")
    else:
        only = ""
        if meas is not None and not all(meas.values()):
            only = f", measured on {', '.join(t for t, v in meas.items() if v)} only"
        if gain > 0:
            val = f"meta-val gain {gain:+.3g} over σ = 1 (better than uniform on held-out batches{only})"
        else:
            val = f"meta-val gain {gain:+.3g} over σ = 1 (no better than uniform on held-out batches{only})"
    if selection and str(selection).startswith("initial policy kept"):
        val += f"; {selection}"
    return f"{moved}; {val}"


def usage_line(model_id: str, alias: str = ALIAS) -> str:
    """How to fine-tune with the registered policy."""
    return (f"zo finetune --model {model_id} --method zo-finetuner --policy models:/{registered_name(model_id)}@"
            f"{alias} --task <task> --lr <lr>")


def policy_card(model_id: str, tasks: Sequence[str], card: Mapping[str, Any] | None = None,
                data_seed: int | None = None) -> tuple[dict, str]:
    """(tags, description) of a registered policy version: base model, meta tasks, and from ``card``
    (``profile``, ``meta_steps``, ``policy_rel_change``, ``meta_val_gain``, ``meta_val_metric``, ...)
    what meta-training did with a plain-words verdict (:func:`policy_verdict`), plus the ``--policy
    models:/…`` usage line. The description is markdown (the registry page renders it)."""
    card = dict(card or {})
    usage = usage_line(model_id)
    verdict = policy_verdict(card.get("policy_rel_change"), card.get("meta_val_gain"),
                             card.get("meta_val_measurable"), card.get("meta_val_selection"))
    tags = {k: str(v) for k, v in card.items()}
    tags.update(usage=usage, verdict=verdict)
    seed = f" (data seed {data_seed})" if data_seed is not None else ""
    lines = [f"**ZO Fine-tuner perturbation policy for `{model_id}`**, meta-trained on {','.join(tasks)}"
             f"{seed}.",
             "",
             f"- **quality**: {verdict}",
             f"- meta tasks: {','.join(tasks)}; profile: {card.get('profile', '?')}; meta steps: "
             f"{card.get('meta_steps', '?')}; kind: {card.get('policy_kind', '?')}",
             f"- movement ‖ω − ω₀‖ / ‖ω₀‖ = {card.get('policy_rel_change', '?')}; meta-val gain over σ = 1: "
             f"{card.get('meta_val_gain', '?')} ({card.get('meta_val_metric', 'no meta-validation')}, "
             f"epoch {card.get('meta_val_epoch', '?')})",
             *([f"- held-out signal measurable: {card['meta_val_measurable']}"]
               if card.get("meta_val_measurable") else []),
             *([f"- selection: {card['meta_val_selection']}"] if card.get("meta_val_selection") else []),
             "",
             "Use it:",
             "",
             f"    {usage}"]
    return tags, "\n".join(lines)


def register_policy(policy_dir: str | Path, model_id: str, tasks: Sequence[str], data_seed: int,
                    tracking_uri: str | None = None, *, run_id: str | None = None,
                    experiment: str = "zo-policy-meta", alias: str = ALIAS,
                    extra_tags: Mapping[str, Any] | None = None,
                    card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Log ``policy_dir`` to a run (``run_id``, or a new run in ``experiment``),
    register it as a version of ``zo-policy-<model>`` and point ``alias`` at it.
    ``card`` (see :func:`policy_card`) becomes the version's tags and description.

    Returns ``{"name", "version", "alias", "uri", "version_uri", "run_id", "source"}``
    where ``uri`` is ``models:/<name>@<alias>`` and ``version_uri`` ``models:/<name>/<version>``.
    """
    from mlflow.exceptions import MlflowException

    from zoplatform.policy import load_policy
    from zoplatform.tracking.mlflow import ensure_experiment

    policy = load_policy(policy_dir)  # refuses anything that is not a valid policy
    pdir = Path(policy.path)
    client, uri = _client(tracking_uri)
    name = registered_name(model_id)
    tags = {"base_model": str(model_id), "meta_tasks": ",".join(tasks), "data_seed": str(data_seed),
            "policy_format": str(policy.schema["format"]), "n_blocks": str(len(policy.schema["blocks"]))}
    card_tags, description = policy_card(model_id, tasks, card, data_seed)
    tags.update(card_tags)
    tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
    own_run = run_id is None
    if own_run:
        exp_id = ensure_experiment(client, experiment, uri)
        run_id = client.create_run(exp_id, tags={"zo.kind": "policy-register", **tags},
                                   run_name=f"register-{name}").info.run_id
    for f in sorted(pdir.iterdir()):
        if f.is_file():
            client.log_artifact(run_id, str(f), ARTIFACT_DIR)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, tags={"base_model": str(model_id)},
                                           description=f"ZO Fine-tuner perturbation policies for {model_id}")
        except MlflowException:  # created concurrently
            client.get_registered_model(name)
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    client.set_registered_model_alias(name, alias, mv.version)
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    return {"name": name, "version": str(mv.version), "alias": alias, "uri": f"models:/{name}@{alias}",
            "version_uri": f"models:/{name}/{mv.version}", "run_id": run_id, "source": source}


_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def resolve_policy(uri: str | Path, tracking_uri: str | None = None, dst_path: str | Path | None = None,
                   info: dict | None = None) -> str:
    """A local policy directory for ``uri``.

    ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the registry), ``runs:/…``
    or another artifact URI (downloaded), or an existing local path (returned
    as is).  Downloads go to ``dst_path`` (default: a fresh temporary directory).
    ``info`` (a dict, optional) receives the provenance: ``version_uri``
    (``models:/NAME/VERSION``, the version an alias pointed at), ``name``,
    ``version``, ``run_id``, ``source`` for a registry URI; ``source`` otherwise.
    Errors are one-line :class:`~zoplatform.errors.ConfigError`.
    """
    text = str(uri).strip()
    if "://" not in text and not text.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        p = Path(text).expanduser()
        if not p.exists():
            raise ConfigError(f"policy {text!r} is neither an existing path nor a models:/NAME@ALIAS, "
                              f"models:/NAME/VERSION or runs:/ URI")
        if info is not None:
            info["source"] = str(p.resolve())
        return str(p.resolve())
    from mlflow.exceptions import MlflowException

    client, uri_ = _client(tracking_uri)
    if text.startswith("models:/"):
        m = _MODELS.match(text)
        if m is None:
            raise ConfigError(f"policy URI {text!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")
        name = m.group("name")
        try:
            mv = (client.get_model_version_by_alias(name, m.group("alias")) if m.group("alias")
                  else client.get_model_version(name, m.group("version")))
        except MlflowException as e:
            raise ConfigError(f"policy {text!r} not found in the registry at {uri_} "
                              f"({str(e).splitlines()[0][:160]})") from None
        source = mv.source
        if info is not None:
            info.update({"version_uri": f"models:/{name}/{mv.version}", "name": name, "version": str(mv.version),
                         "run_id": mv.run_id or "", "source": source})
    else:
        source = text
        if info is not None:
            info["source"] = source
    from mlflow.artifacts import download_artifacts

    dst = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="zo-policy-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri_)
    except (MlflowException, OSError) as e:
        raise ConfigError(f"cannot download policy {text!r} from {source} "
                          f"({str(e).splitlines()[0][:160]})") from None
    return str(Path(local).resolve())
