"""The ``zo`` commands' options are derived from their pydantic configs (pipelines/cli/options.py): every field a
user sets has a flag, its value reaches the config, a bad choice is one line naming the allowed values.

No model is loaded: the commands' ``run`` is replaced by a stub that records the config it is given."""
from __future__ import annotations

from typing import Any, Literal

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field

from pipelines.cli import main as cli
from pipelines.cli.options import config_options
from pipelines.compare.config import CompareConfig
from pipelines.finetune.config import FinetuneConfig
from pipelines.meta_train import MetaTrainRunConfig
from pipelines.sweep.config import SweepConfig

# not a flag of its own: a dict, given as repeated --option KEY=VALUE (tested below)
FINETUNE_NOT_FLAGS = {"method_options"}


def command(name: str) -> click.Command:
    return cli.commands[name]


def option_of(cmd: click.Command, field: str) -> click.Option:
    found = [p for p in cmd.params if isinstance(p, click.Option) and p.name == field]
    assert found, f"zo {cmd.name} has no option for config field {field!r}"
    return found[0]


@pytest.fixture
def recorded(monkeypatch):
    """Stub the heavy steps of the four commands; ``recorded["cfg"]`` is the validated config they got."""
    import pipelines.compare
    import pipelines.finetune
    import pipelines.launch
    import pipelines.meta_train
    import pipelines.sweep

    seen: dict[str, Any] = {}
    load = pipelines.finetune.load_config

    def load_and_record(path, overrides):
        seen["cfg"] = load(path, overrides)
        return seen["cfg"]

    def fake_run(cfg, *a, **k):
        seen["cfg"], seen["ran"] = cfg, True
        return {"status": "finished", "out": "."}

    monkeypatch.setattr(pipelines.finetune, "load_config", load_and_record)
    for mod in (pipelines.finetune, pipelines.meta_train, pipelines.sweep, pipelines.compare):
        monkeypatch.setattr(mod, "run", fake_run)
    monkeypatch.setattr(pipelines.launch, "launch", lambda *a, **k: 0)  # --workers N: no torchrun
    return seen


def sample(field: str) -> tuple[list[str], Any]:
    """A command line giving ``field`` a value other than its default, and that value (from the option's type)."""
    opt = option_of(command("finetune"), field)
    default = FinetuneConfig.model_fields[field].default
    if opt.is_flag:  # --x/--no-x: the one that flips the default
        return [opt.opts[0] if not default else opt.secondary_opts[0]], not default
    if isinstance(opt.type, click.Choice):
        value = next(c for c in opt.type.choices if c != default)
        return [opt.opts[0], value], value
    if opt.type is click.INT:
        value = 2 if default is None else default + 1
    elif opt.type is click.FLOAT:
        value = 0.5 if not default else default / 2
    else:
        value = f"given-{field}"
    return [opt.opts[0], str(value)], value


# what some fields need beside them to make a valid config
NEEDS = {"policy": ["--method", "zo-finetuner"], "resume": ["--out-dir", "{tmp}", "--workers", "1"]}


@pytest.mark.parametrize("field", [f for f in FinetuneConfig.model_fields if f not in FINETUNE_NOT_FLAGS])
def test_every_finetune_field_has_a_flag_whose_value_reaches_the_config(field, recorded, tmp_path):
    args, value = sample(field)
    extra = [a.format(tmp=tmp_path / "run") for a in NEEDS.get(field, [])]
    res = CliRunner().invoke(cli, ["finetune", *extra, *args])
    assert res.exit_code == 0, res.output
    cfg = recorded["cfg"]
    assert getattr(cfg, field) == value != FinetuneConfig.model_fields[field].default
    assert field in cfg.model_fields_set


def test_lora_alpha_reaches_the_run_config(recorded):
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--lora", "--lora-alpha", "8",
                                   "--no-tracking"])
    assert res.exit_code == 0, res.output
    assert recorded["ran"] and recorded["cfg"].lora and recorded["cfg"].lora_alpha == 8.0


def test_options_not_given_keep_the_config_file_values(recorded, tmp_path):
    """Every derived option defaults to None: a value in --config is not overwritten by the field's default."""
    (tmp_path / "c.yaml").write_text("lora_alpha: 4\nzero_shot: false\nschedule: linear\n")
    res = CliRunner().invoke(cli, ["finetune", "--config", str(tmp_path / "c.yaml"), "--schedule", "constant"])
    assert res.exit_code == 0, res.output
    cfg = recorded["cfg"]
    assert (cfg.lora_alpha, cfg.zero_shot, cfg.schedule) == (4.0, False, "constant")  # the CLI value wins


def test_method_option_reaches_method_options(recorded):
    res = CliRunner().invoke(cli, ["finetune", "--option", "init_budget=0.25", "--option", "profile=port"])
    assert res.exit_code == 0, res.output
    assert recorded["cfg"].method_options == {"init_budget": 0.25, "profile": "port"}


@pytest.mark.parametrize("name,model,not_options", [
    ("finetune", FinetuneConfig, FINETUNE_NOT_FLAGS),
    ("sweep", SweepConfig, {"finetune"}),  # a dict: the fine-tune flags of the command and --set KEY=VALUE
    ("compare", CompareConfig, {"configs"}),  # a dict: read from the --configs file
    ("meta-train", MetaTrainRunConfig, set()),
])
def test_every_config_field_has_an_option(name, model, not_options):
    names = {p.name for p in command(name).params}
    assert set(model.model_fields) - not_options <= names
    assert not names & not_options


@pytest.mark.parametrize("args,field,allowed", [
    (["finetune", "--schedule", "cosine"], "schedule", ["constant", "linear"]),
    (["finetune", "--precision", "fp7"], "precision", ["fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "fp16-true"]),
    (["sweep", "--backend", "slurm"], "backend", ["ray", "optuna"]),
    (["sweep", "--dtype", "int8"], "dtype", ["float32", "bfloat16", "float16"]),
    (["compare", "--methods", "mezo", "--tasks", "sst2", "--head-init", "zeros"], "head_init", ["random", "probe"]),
    (["meta-train", "--mixture", "random"], "mixture", ["round_robin", "proportional"]),
])
def test_a_bad_choice_is_one_line_naming_the_allowed_values(args, field, allowed, recorded):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    bad = args[-1]
    flag = args[-2]
    assert lines == [f"error: {field}={bad!r} is invalid ({flag}): allowed: {', '.join(map(repr, allowed))}"]
    assert "ran" not in recorded


def test_a_non_number_is_one_line_exit_2(recorded):
    res = CliRunner().invoke(cli, ["finetune", "--lora-alpha", "big"])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "error: Invalid value for '--lora-alpha': 'big' is not a valid float."]


def test_sweep_and_meta_train_values_reach_their_configs(recorded):
    res = CliRunner().invoke(cli, ["sweep", "--objectives", "loss, acc", "--dtype", "bfloat16", "--eval-every", "7",
                                   "--set", "max_length=256", "--backend", "optuna", "--json"])
    assert res.exit_code == 0, res.output
    cfg = recorded["cfg"]
    assert cfg.objectives == ["loss", "acc"] and cfg.backend == "optuna"
    assert cfg.finetune == {"dtype": "bfloat16", "eval_every": 7, "max_length": 256}
    res = CliRunner().invoke(cli, ["meta-train", "--tasks", "sst2,copa", "--warmup-steps", "3", "--register",
                                   "--no-tracking", "--json"])
    assert res.exit_code == 0, res.output
    cfg = recorded["cfg"]
    assert cfg.tasks == ["sst2", "copa"] and cfg.warmup_steps == 3 and cfg.register_policy and not cfg.tracking


def test_compare_values_reach_its_config(recorded, tmp_path):
    res = CliRunner().invoke(cli, ["compare", "--methods", "mezo,fo", "--tasks", "sst2", "--seeds", "2",
                                   "--forward-budget", "8", "--task-budget", "sst2=6", "--dtype", "bfloat16",
                                   "--report-only", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    cfg = recorded["cfg"]
    assert (cfg.methods, cfg.tasks, cfg.seeds, cfg.forward_budget) == (["mezo", "fo"], ["sst2"], [0, 1], 8)
    assert cfg.task_budgets == {"sst2": 6} and cfg.dtype == "bfloat16" and cfg.report_only


# ----------------------------------------------------------------------------- the builder itself
class Toy(BaseModel):
    name: str = Field("a", description="the name")
    count: int | None = Field(None, description="how many")
    kind: Literal["x", "y"] = "x"
    on: bool = True
    tags: list[str] = Field(default_factory=lambda: ["t"])
    extra: dict[str, Any] = Field(default_factory=dict)


def toy_command(**kw):
    @click.command()
    @config_options(Toy, **kw)
    def toy(**opts):
        click.echo(repr(sorted(opts.items())))

    return toy


def test_options_default_to_none_and_convert_by_type():
    cmd = toy_command(exclude={"extra": "a dict"}, flags={"on": "--enabled"})
    res = CliRunner().invoke(cmd, [])
    assert res.output.strip() == repr(sorted(dict.fromkeys(["name", "count", "kind", "on", "tags"]).items()))
    res = CliRunner().invoke(cmd, ["--count", "3", "--kind", "y", "--no-enabled", "--tags", "a, b,"])
    assert "('count', 3)" in res.output and "('kind', 'y')" in res.output and "('on', False)" in res.output
    assert "('tags', ['a', 'b'])" in res.output
    text = " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())
    assert "--name TEXT the name [default: a]" in text and "--kind [x|y]" in text and "--enabled / --no-enabled" in text


def test_a_field_without_a_cli_form_must_be_excluded_or_given():
    with pytest.raises(TypeError, match=r"Toy.extra: .*dict.* has no automatic CLI option"):
        toy_command()
    toy_command(custom={"extra": click.option("--extra-file", "extra")})  # given explicitly: fine


def test_settings_for_fields_the_config_lacks_are_refused():
    with pytest.raises(TypeError, match=r"fields it does not have: \['gone'\]"):
        toy_command(exclude={"extra": "a dict", "gone": "renamed since"})
