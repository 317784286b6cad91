"""The registry contract, driven by one table of methods (tests/methods_db.py): every registered method
decreases a quadratic, is a no-op at lr 0, replays bit-exactly, resumes identically, refuses bad input in
one line, has a packaged search space and a golden trajectory on a tiny LM."""
import json
import os
from pathlib import Path

import pytest
import torch

import zoplatform
from tests.methods_db import COMMON_ERRORS, METHODS
from zoplatform.params import blocks_from_named

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(METHODS)


def net_(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 12, generator=g), torch.randn(16, 3, generator=g)


def test_every_registered_method_has_an_entry():
    assert set(zoplatform.method_names()) == set(METHODS)


@pytest.mark.parametrize("name", NAMES)
def test_forwards_per_step_and_direction_flag(name):
    m = zoplatform.make(name)
    assert m.forwards_per_step == METHODS[name].forwards
    assert ("direction" in type(m.config).model_fields) == METHODS[name].has_direction


@pytest.mark.parametrize("name,variant", [(n, v) for n in NAMES for v in METHODS[n].variants])
def test_state_is_typed_frozen_round_trips_and_lives_off_the_method(name, variant):
    """init/step return the method's frozen State; state_dict() → from_state_dict is the identity; a step
    leaves the state it was given as it was (but for the buffers the class declares donated); neither init
    nor step stores anything on the method object."""
    import dataclasses

    from zoplatform.algorithms.state import State

    net = net_()
    x, y = data()
    blocks = blocks_from_named(net.named_parameters())
    m = zoplatform.make(name, lr=5e-2, eps=1e-3, weight_decay=0.1, **variant)
    before = dict(vars(m))
    state = m.init(blocks)
    assert type(state) is m.State and issubclass(m.State, State) and dataclasses.is_dataclass(state)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.t = 99
    with pytest.raises(TypeError):
        state["t"] = 99  # read-only mapping view
    for k in range(3):
        kept = state.state_dict()
        new, _ = m.step(state, blocks, lambda: torch.nn.functional.mse_loss(net(x), y), 1000 + k, 5e-2)
        assert type(new) is m.State and (new is not state or not dataclasses.fields(state))
        donated = {key for key in kept if key.partition("/")[0] in m.State.donated}
        for key, v in kept.items():  # the old state is unchanged (donated buffers excepted)
            if key not in donated:
                assert (torch.equal(v.nan_to_num(7.0), state[key].nan_to_num(7.0)) if torch.is_tensor(v)
                        else v == state[key]), key
        round_trip = m.State.from_state_dict(new.state_dict())
        assert type(round_trip) is m.State and round_trip == new
        if "t" in new:
            assert new["t"] == k + 1
        state = new
    assert vars(m).keys() == before.keys() and all(vars(m)[k] is v for k, v in before.items())
    with pytest.raises(ValueError, match="unknown state key"):
        m.State.from_state_dict({**state.state_dict(), "no_such_field": 1})


@pytest.mark.parametrize("name", NAMES)
def test_decreases_a_quadratic(name):
    A = torch.linspace(0.5, 2.0, 10)
    x = torch.nn.Parameter(torch.ones(10))
    opt = zoplatform.optimizer(name, [("x", x)], seed=3, **METHODS[name].quadratic)
    start = float((A * x.detach() ** 2).sum())
    for _ in range(300):
        opt.step(lambda: (A * x ** 2).sum())
    assert float((A * x.detach() ** 2).sum()) < 0.05 * start


@pytest.mark.parametrize("name,variant", [(n, v) for n in NAMES for v in METHODS[n].variants])
def test_replay_is_bit_exact_and_recovers_the_state(tmp_path, name, variant):
    net = net_()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = data()
    opt = zoplatform.optimizer(name, net.named_parameters(), lr=5e-2, eps=1e-3, weight_decay=0.1, seed=4,
                               **variant)
    for _ in range(12):
        opt.step(lambda: torch.nn.functional.mse_loss(net(x), y))
    assert all(len(r.losses) == opt.method.forwards_per_step for r in opt.trajectory.records)
    traj = zoplatform.Trajectory.load(opt.trajectory.save(tmp_path / "t.jsonl"))
    fresh = net_(seed=5)
    fresh.load_state_dict(base)
    state = zoplatform.replay(zoplatform.make(traj.method, **traj.config), blocks_from_named(fresh.named_parameters()),
                              traj.records)
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert set(state) == set(opt.method_state)
    for k, v in opt.method_state.items():
        same = torch.allclose(v, state[k], rtol=0, atol=0, equal_nan=True) if torch.is_tensor(v) else v == state[k]
        assert same, k  # (NaN entries, e.g. S-MeZO's thresholds of unmasked blocks, count as equal)


@pytest.mark.parametrize("name,variant", [(n, v) for n in NAMES for v in METHODS[n].variants])
def test_state_dict_resume_is_identical(name, variant):
    x, y = data()

    def run(split):
        net = net_()
        opt = zoplatform.optimizer(name, net.named_parameters(), lr=1e-2, eps=1e-3, seed=7, **variant)
        for _ in range(split):
            opt.step(lambda: torch.nn.functional.mse_loss(net(x), y))
        if split == 10:
            return [p.detach().clone() for p in net.parameters()]
        sd, weights = opt.state_dict(), {k: v.clone() for k, v in net.state_dict().items()}
        net2 = net_(seed=99)
        net2.load_state_dict(weights)
        opt2 = zoplatform.optimizer(name, net2.named_parameters(), lr=5.0, eps=1e-3, seed=0, **variant)
        opt2.load_state_dict(sd)
        for _ in range(10 - split):
            opt2.step(lambda: torch.nn.functional.mse_loss(net2(x), y))
        return [p.detach().clone() for p in net2.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(10), run(4)))


@pytest.mark.parametrize("name", NAMES)
def test_lr_zero_restores_parameters_within_fp32_tolerance(name):
    net = net_()
    before = [p.detach().clone() for p in net.parameters()]
    opt = zoplatform.optimizer(name, net.named_parameters(), lr=1e-9, eps=1e-3)
    opt.param_groups[0]["lr"] = 0.0
    x, y = data()
    for _ in range(5):
        opt.step(lambda: torch.nn.functional.mse_loss(net(x), y))
    for b, p in zip(before, net.parameters()):
        torch.testing.assert_close(p.detach(), b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,bad,msg", [(n, b, m) for n in NAMES for b, m in COMMON_ERRORS + METHODS[n].errors])
def test_bad_input_is_one_line_naming_the_value(name, bad, msg):
    with pytest.raises(zoplatform.ConfigError, match=msg) as e:
        zoplatform.optimizer(name, [("x", torch.nn.Parameter(torch.ones(3, 3)))], **bad)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{name}: ")


@pytest.mark.parametrize("name", NAMES)
def test_every_method_has_a_packaged_search_space(name):
    from search_spaces import load_space, packaged_spaces, to_points

    assert name in packaged_spaces()
    space = load_space(name)
    assert to_points(space), f"{name}'s space has no paper defaults to evaluate first"


def golden_trajectory(name: str) -> list[list[float]]:
    from zoplatform.models import load_model
    from zoplatform.objectives import make_scorer

    ex = [zoplatform.Example("a gripping , funny film It was", (" terrible", " great"), 1),
          zoplatform.Example("dull and far too long It was", (" terrible", " great"), 0),
          zoplatform.Example("the cast is wonderful It was", (" terrible", " great"), 1),
          zoplatform.Example("a mess from start to finish It was", (" terrible", " great"), 0)]
    model, tok = load_model("tiny:llama", seed=0)
    scorer = make_scorer(model, tok)
    opt = zoplatform.optimizer(name, model.named_parameters(), lr=5e-3, eps=1e-2, seed=1,
                               no_decay=zoplatform.no_decay_names(model))
    with torch.inference_mode():
        for _ in range(4):
            opt.step(lambda: scorer.loss(ex))
    return [list(r.losses) for r in opt.trajectory.records]


@pytest.mark.parametrize("name", NAMES)
def test_golden_trajectory_on_a_tiny_lm(name):
    """Pins every method's losses on tiny:llama.  A missing file fails (it is never written silently);
    regenerate deliberately with ``ZO_REGEN_GOLDEN=1`` and say why in the commit."""
    path = GOLDEN / f"{name}_tiny_llama.json"
    got = golden_trajectory(name)
    if os.environ.get("ZO_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert path.is_file(), f"{path} is missing: generate it with ZO_REGEN_GOLDEN=1 and commit it"
    want = json.loads(path.read_text())
    flat = lambda t: [x for step in t for x in step]
    assert flat(got) == pytest.approx(flat(want), rel=1e-5, abs=1e-6)


def _notes_headings() -> set[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "method-notes.md").read_text()
    return {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}


@pytest.mark.parametrize("name", NAMES)
def test_module_docstring_is_citation_rule_provenance_and_a_pointer(name):
    """A method module's docstring is short (≤ 40 lines) and reads: the paper (an arXiv id), the update rule
    (a literal block), its provenance and departures, and a pointer to its section of docs/method-notes.md,
    where implementation notes and measurements live (issue 33)."""
    import importlib
    import re

    doc = importlib.import_module(type(zoplatform.make(name)).__module__).__doc__
    lines = doc.strip().splitlines()
    assert len(lines) <= 40, f"{name}: module docstring has {len(lines)} lines; move notes to docs/method-notes.md"
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", doc), name
    assert "::\n" in doc and "Provenance and departures" in doc, name
    pointer = re.search(r"``docs/method-notes\.md``, ([^.\n]+)\.", doc)
    assert pointer and pointer.group(1) in _notes_headings(), (name, pointer and pointer.group(1))
