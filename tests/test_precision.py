"""Parallel direction generation and the precision modes (tier c: fast path = reference)."""
import pytest
import torch

import zoplatform
from zoplatform import params, precision
from zoplatform.errors import ConfigError


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 48),
                               torch.nn.Linear(48, 3))


def closure_for(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 40, generator=g), torch.randn(32, 3, generator=g)
    return lambda: torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(), y)


def hyper(name, **kw):
    fields = zoplatform.get_method(name).Config.model_fields
    out = {"lr": 1e-2, "eps": 1e-3}
    if "chunk_size" in fields:
        out["chunk_size"] = 1024  # several chunks per tensor
    return out | {k: v for k, v in kw.items() if k in fields}


def laws(name):
    fields = zoplatform.get_method(name).Config.model_fields
    return ["gaussian", "rademacher", "pool"] if "direction" in fields else [None]


CASES = [(m, d) for m in zoplatform.method_names() for d in laws(m)]


def train(name, direction, threads, steps=3, prec="fp32", **extra):
    model = net()
    if not precision.is_mixed(prec):  # as the recipe: a *-true model is loaded in its dtype
        precision.cast_model_(model, prec)
    params.set_threads(threads)
    try:
        opt = zoplatform.optimizer(name, model.named_parameters(), seed=5, precision=prec,
                                   **hyper(name, direction=direction, **extra))
        precision.cast_model_(model, prec)
        f = closure_for(model)
        for _ in range(steps):
            opt.step(f)
    finally:
        params.set_threads(None)
    return model, opt


@pytest.mark.parametrize("name,direction", CASES)
def test_parallel_generation_is_bit_identical_to_serial(name, direction):
    m1, o1 = train(name, direction, threads=1)
    m2, o2 = train(name, direction, threads=3)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert [r.losses for r in o1.trajectory.records] == [r.losses for r in o2.trajectory.records]


def test_sparse_mezo_random_mask_and_curvzo_profiles_parallel():
    for name, extra in [("sparse-mezo", {"mask": "random"}), ("curvzo", {"profile": "contrast"}),
                        ("curvzo", {"profile": "port"}), ("loren", {"update": "per_step"})]:
        m1, _ = train(name, "gaussian", 1, **extra)
        m2, _ = train(name, "gaussian", 2, **extra)
        assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters())), (name, extra)


def test_directions_are_a_function_of_seed_and_name_whatever_the_threads():
    blocks = [params.Block(f"b{i}", torch.zeros(3000 + 17 * i), True, zoplatform.rng.name_key(f"b{i}"))
              for i in range(7)]
    law, s = zoplatform.rng.make_law("gaussian"), params.Scratch(1024)
    params.axpy_(blocks, 9, law, s, 1.0)
    serial = [b.param.clone() for b in blocks]
    for b in blocks:
        b.param.zero_()
    params.set_threads(4)
    try:
        params.axpy_(blocks[::-1], 9, law, s, 1.0)  # order does not matter either
    finally:
        params.set_threads(None)
    assert all(torch.equal(a, b.param) for a, b in zip(serial, blocks))


@pytest.mark.parametrize("prec", ["fp32", "bf16-mixed", "fp16-mixed", "bf16-true"])
@pytest.mark.parametrize("name", zoplatform.method_names())
def test_replay_is_bit_exact_in_every_precision(name, prec):
    model, opt = train(name, "gaussian", 2, steps=4, prec=prec)
    assert_replays_bit_exactly(name, prec, model, opt)


def assert_replays_bit_exactly(name, prec, model, opt):
    """Replaying ``opt``'s trajectory on a fresh net in ``prec`` gives ``model``'s weights (and masters) exactly."""
    fresh = net()
    if not precision.is_mixed(prec):
        precision.cast_model_(fresh, prec)
    blocks = precision.with_masters(zoplatform.model_blocks(fresh), prec)
    precision.cast_model_(fresh, prec)
    method = zoplatform.make(name, **opt.trajectory.config)
    zoplatform.replay(method, blocks, opt.trajectory.records)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.blocks, blocks):
        assert (a.master is None) == (b.master is None)
        if a.master is not None:
            assert torch.equal(a.master, b.master)
            assert torch.equal(a.param, a.master.to(a.param.dtype))  # the working copy is the master's rounding


@pytest.mark.parametrize("prec", ["bf16-mixed", "fp32"])
@pytest.mark.parametrize("name", zoplatform.method_names())
def test_state_dict_resume_is_identical_in_mixed_precision(name, prec):
    full, _ = train(name, "gaussian", 1, steps=6, prec=prec)
    part, opt = train(name, "gaussian", 1, steps=3, prec=prec)
    sd = opt.state_dict()
    weights = {k: v.clone() for k, v in part.state_dict().items()}
    again = net(seed=3)
    opt2 = zoplatform.optimizer(name, again.named_parameters(), seed=0, precision=prec,
                               **hyper(name, direction="gaussian"))  # as train(): not every default is gaussian
    precision.cast_model_(again, prec)
    again.load_state_dict(weights)
    opt2.load_state_dict(sd)
    f = closure_for(again)
    for _ in range(3):
        opt2.step(f)
    for a, b in zip(full.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_mixed_precision_keeps_updates_that_bf16_weights_lose():
    """An update 100× below bf16's resolution: lost in bf16-true, kept by the fp32 master."""
    def run(prec):
        dtype = torch.float32 if precision.is_mixed(prec) else precision.compute_dtype(prec)
        x = torch.nn.Parameter(torch.full((4096,), 0.05, dtype=dtype))
        opt = zoplatform.optimizer("mezo", [("x", x)], lr=1e-7, eps=1e-3, seed=0, precision=prec)
        for _ in range(20):
            opt.step(lambda: (x.float() ** 2).sum())
        return x, opt

    x_true, _ = run("bf16-true")
    x_mixed, opt_mixed = run("bf16-mixed")
    x_fp32, _ = run("fp32")
    master = opt_mixed.blocks[0].master
    d_mixed, d_fp32 = master - 0.05, x_fp32.detach() - 0.05
    assert float(d_mixed.abs().max()) < 2.0 ** -9 * 0.05  # every move is below half a bf16 ulp at 0.05 ...
    assert torch.equal(x_mixed.detach(), torch.full((4096,), 0.05).to(torch.bfloat16))  # ... so bf16 can't hold it
    # the master follows fp32 MeZO (g differs only by the bf16 forward's rounding)
    assert float((d_mixed - d_fp32).norm() / d_fp32.norm()) < 0.1
    # bf16 weights: the ±ε round trips and updates round to whole ulps, far from fp32's result
    err_true = float((x_true.detach().float() - x_fp32.detach()).norm())
    assert err_true > 10 * float((master - x_fp32.detach()).norm())


def test_mixed_first_pass_writes_the_rounded_plus_point_and_moves_master_to_minus():
    x = torch.nn.Parameter(torch.linspace(-1, 1, 5000))
    blocks = precision.with_masters(params.blocks_from_named([("x", x)]), "bf16-mixed")
    law, s = zoplatform.rng.make_law("gaussian"), params.Scratch(1024)
    z = torch.zeros(5000)
    params.axpy_([params.Block("x", z, True, blocks[0].key)], 3, law, s, 1.0)
    base = torch.linspace(-1, 1, 5000)
    seen = []
    params.two_point_(blocks, 3, law, s, lambda: seen.append(x.detach().clone()) or 0.0, 0.01)
    assert torch.equal(seen[0], torch.add(base - 0.01 * z, z, alpha=0.02).to(torch.bfloat16))
    torch.testing.assert_close(seen[1].float(), (base - 0.01 * z), rtol=0, atol=8e-3)
    assert torch.equal(blocks[0].master, base.add(z, alpha=-0.01))
    assert torch.equal(seen[1], blocks[0].master.to(torch.bfloat16))


def test_bad_precision_is_one_line():
    with pytest.raises(ConfigError, match=r"precision='bf32' is not a precision mode; choose one of: fp32, bf16-mixed"):
        zoplatform.optimizer("mezo", [torch.nn.Parameter(torch.ones(3))], precision="bf32")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        params.set_threads(0)


WRITE_CASES = [(m, {}) for m in zoplatform.method_names()] + [
    ("loren", {"update": "per_step"}), ("loren", {"update": "per_step", "momentum": 0.0}),
    ("sparse-mezo", {"mask": "random"})]


@pytest.mark.parametrize("prec", ["fp32", "bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("name,extra", WRITE_CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_every_parameter_write_goes_through_update_(monkeypatch, name, extra, prec):
    """``params._update_`` is the one place parameter values change: at each of its calls and at
    every forward, the weights (and fp32 masters) are bit for bit as its last call left them, so
    no method, pass or precision mode writes them any other way."""
    model = net()
    if not precision.is_mixed(prec):
        precision.cast_model_(model, prec)
    opt = zoplatform.optimizer(name, model.named_parameters(), seed=5, precision=prec,
                               **hyper(name, weight_decay=0.1, **extra))
    precision.cast_model_(model, prec)

    def tensors():
        return [b.param.data for b in opt.blocks] + [b.master for b in opt.blocks if b.master is not None]

    start = [t.clone() for t in tensors()]
    last = [t.clone() for t in start]
    calls = []

    def unchanged(where):
        assert all(torch.equal(a, b) for a, b in zip(last, tensors())), f"parameters changed outside _update_ ({where})"

    real = params._update_

    def guarded(*args, **kw):
        unchanged("before an _update_ call")
        real(*args, **kw)
        calls.append(1)
        last[:] = [t.clone() for t in tensors()]

    monkeypatch.setattr(params, "_update_", guarded)
    f = closure_for(model)

    def forward():
        unchanged("at a forward pass")
        return f()

    params.set_threads(1)  # the check compares between calls, so one block at a time
    try:
        for _ in range(2):
            opt.step(forward)
    finally:
        params.set_threads(None)
    unchanged("at the end of the steps")
    assert calls and any(not torch.equal(a, b) for a, b in zip(start, tensors()))
