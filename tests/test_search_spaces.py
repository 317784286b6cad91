"""Search spaces: every packaged space samples and builds its method; bad spaces
are one-line ConfigErrors at load time."""
import pytest

import search_spaces
import zoplatform
from search_spaces import load_space, method_params, sample, to_points
from zoplatform.errors import ConfigError

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def draws(space, n=16, seed=0):
    """The paper defaults first, then seeded TPE samples (define-by-run)."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    for p in to_points(space):
        study.enqueue_trial(p)
    out = []
    for i in range(n):
        t = study.ask()
        params = sample(space, t)
        study.tell(t, float(i % 5))
        out.append(params)
    return out


@pytest.mark.parametrize("name", search_spaces.packaged_spaces())
def test_every_packaged_space_samples_and_builds_its_method(name):
    if name not in zoplatform.method_names():
        with pytest.raises(ConfigError, match="is not registered"):
            load_space(name)
        pytest.skip(f"{name} is not registered yet")
    space = load_space(name)
    assert space.method == name and space.defaults, "every packaged space seeds the papers' defaults"
    samples = draws(space)
    assert samples[: len(space.defaults)] == to_points(space)
    for params in samples:
        for p in space.params:
            assert (p.name in params) == p.active(params), (p.name, params)
            if p.name in params:
                assert p.contains(params[p.name]), (p.name, params[p.name])
        method = zoplatform.make(name, **method_params(space, params))
        for k, v in method_params(space, params).items():
            assert getattr(method.config, k) == v


def test_mezo_defaults_are_the_papers_grid():
    assert to_points(load_space("mezo")) == [{"lr": 1e-6, "eps": 1e-3}, {"lr": 1e-7, "eps": 1e-3}]


def test_conditional_knobs_exist_only_under_their_condition():
    space = load_space("curvzo")
    seen = set()
    for params in draws(space, n=40, seed=1):
        seen.add(params["profile"])
        assert "credit_ema" in params  # the |Δ| EMA serves every profile
        assert ("pi_floor" in params) == (params["profile"] == "contrast")
    assert seen == {"paper", "port", "contrast"}


def test_a_space_file_with_run_options_and_fixed_knobs(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: mezo\nparams:\n"
                 "  lr: {dist: log_uniform, low: 1.0e-6, high: 1.0e-3}\n"
                 "  eps: {dist: fixed, value: 0.01}\n"
                 "  direction: {dist: choice, values: [gaussian, rademacher]}\n"
                 "  batch_size: {dist: int, low: 4, high: 16, step: 4}\n"
                 "  schedule: {dist: choice, values: [constant, linear]}\n"
                 "defaults:\n  - {lr: 1.0e-4, direction: gaussian, batch_size: 8, schedule: linear}\n")
    space = load_space(str(f))
    assert to_points(space) == [{"lr": 1e-4, "direction": "gaussian", "batch_size": 8, "schedule": "linear"}]
    for params in draws(space, n=6):
        assert params["eps"] == 0.01 and params["batch_size"] in (4, 8, 12, 16)
        assert set(method_params(space, params)) == {"lr", "eps", "direction"}


GOOD = {"lr": "{dist: log_uniform, low: 1.0e-7, high: 1.0e-4}"}


def _file(tmp_path, params: dict, extra: str = "", method: str = "mezo"):
    body = f"method: {method}\nparams:\n" + "".join(f"  {k}: {v}\n" for k, v in params.items()) + extra
    f = tmp_path / "space.yaml"
    f.write_text(body)
    return str(f)


BAD = [
    (dict(GOOD, momentum="{dist: uniform, low: 0, high: 1}"), "", "params.momentum is not an option of mezo"),
    ({"lr": "{dist: log_uniform, low: 1.0e-3, high: 1.0e-4}"}, "", "low must be < high"),
    ({"lr": "{dist: log_uniform, low: 0.0, high: 1.0e-4}"}, "", "a log-scale range needs low > 0"),
    ({"lr": "{dist: lognormal, low: 1, high: 2}"}, "", "dist='lognormal' is not a distribution"),
    ({"lr": "{dist: uniform, low: a, high: 2}"}, "", "needs numeric low and high"),
    ({"lr": "{dist: uniform, low: 1.0e-6, high: 1.0e-3, sigma: 2}"}, "", "unknown field(s) ['sigma']"),
    ({"direction": "{dist: choice, values: []}"}, "", "choice needs a non-empty list"),
    ({"direction": "{dist: choice, values: [gaussian, gaussian]}"}, "", "must be distinct"),
    ({"chunk_size": "{dist: int, low: 1024.5, high: 4096}"}, "", "int needs integer"),
    (dict(GOOD, eps="{dist: uniform, low: 0.001, high: 0.01, when: {direction: gaussian}}"), "",
     "when refers to 'direction', which is not an earlier parameter"),
    (dict(GOOD, eps="{dist: uniform, low: 0.001, high: 0.01, when: {lr: 1.0e-5}}"), "",
     "when can only test a choice or fixed parameter"),
    ({"direction": "{dist: choice, values: [gaussian]}",
      "eps": "{dist: uniform, low: 0.001, high: 0.01, when: {direction: sobol}}"}, "",
     "when direction='sobol' can never"),
    ({"lr": "{dist: uniform, low: -1.0, high: 1.0}"}, "", "params.lr=-1.0"),  # outside MeZOConfig (lr > 0)
    ({"chunk_size": "{dist: int, low: 16, high: 4096}"}, "", "params.chunk_size=16"),
    ({"schedule": "{dist: choice, values: [constant, cosine]}"}, "", "schedule='cosine' is invalid"),
    (GOOD, "defaults:\n  - {lr: 1.0e-2}\n", "defaults[0]: lr=0.01 is outside the space's log_uniform"),
    (GOOD, "defaults:\n  - {eps: 1.0e-3}\n", "defaults[0]: 'eps' is not a parameter of the space"),
    (dict(GOOD, eps="{dist: uniform, low: 0.001, high: 0.01}"), "defaults:\n  - {lr: 1.0e-6}\n",
     "defaults[0]: no value for eps"),
    ({"direction": "{dist: choice, values: [gaussian, rademacher]}",
      "eps": "{dist: uniform, low: 0.001, high: 0.01, when: {direction: rademacher}}"},
     "defaults:\n  - {direction: gaussian, eps: 0.005}\n", "eps is set but inactive here"),
    (GOOD, "defaults: {lr: 1.0e-6}\n", "'defaults' must be a list of mappings"),
    (GOOD, "grid: true\n", "unknown top-level key(s) ['grid']"),
    ({}, "", "'params' must be a non-empty mapping"),
]


@pytest.mark.parametrize("params,extra,msg", BAD, ids=[m for *_, m in BAD])
def test_bad_spaces_are_one_line_errors(tmp_path, params, extra, msg):
    with pytest.raises(ConfigError) as e:
        load_space(_file(tmp_path, params, extra))
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert str(e.value).startswith("search space ")


def test_space_names_and_files_that_do_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="no packaged search space for method 'adamzo'"):
        load_space("adamzo")
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="method 'adamzo' is not registered"):
        load_space(_file(tmp_path, GOOD, method="adamzo"))
    (tmp_path / "broken.yaml").write_text("method: mezo\nparams: {lr: [1, \n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_space(str(tmp_path / "broken.yaml"))


def test_cross_field_checks_of_the_method_run_on_load(tmp_path):
    if "curvzo" not in zoplatform.method_names():
        pytest.skip("curvzo is not registered yet")
    # init_budget above CurvZO's budget_max: the method's constructor rejects it, at load time
    f = _file(tmp_path, {"init_budget": "{dist: uniform, low: 0.3, high: 0.9}"}, method="curvzo")
    with pytest.raises(ConfigError, match=r"params.init_budget=0.9: .*must lie in"):
        load_space(f)


def test_bench_measures_a_spec_that_names_its_direction_once_with_that_law():
    """`zo bench step-cost --methods mezo:direction=rademacher` measures MeZO once, with its own law (it used to
    pass direction twice and crash); a spec without one is measured under every --directions law."""
    from pipelines.bench.step import _laws

    assert _laws("mezo", ["gaussian", "pool"], {"direction": "rademacher"}) == [None]
    assert _laws("mezo", ["gaussian", "pool"], {}) == ["gaussian", "pool"]
    assert _laws("loren", ["gaussian", "pool"]) == [None]  # LOREN has its own sampler
