"""ZO Fine-tuner, deploying side: policy file format, trace normalisation, MeZO
equivalence of the identity policy, exact replay/resume, layout refusal."""
import json
import math

import pytest
import torch

import zoplatform
from tests.conftest import DATA, needs_data
from zoplatform.algorithms.zo_finetuner import ZOFinetuner
from zoplatform.errors import ConfigError
from zoplatform.params import Scratch, blocks_from_named, model_blocks
from zoplatform.policy import (
    DEFAULT_EMBEDDING_ROWS,
    FEATURES,
    direction_tensor,
    effective_counts,
    embedding_block_names,
    init_policy_weights,
    load_policy,
    make_schema,
    policy_blocks,
    policy_sigma,
    save_policy,
    trace_scale,
)
from zoplatform.rng import make_law


def small_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(40, 6), torch.nn.Linear(6, 5), torch.nn.LayerNorm(5),
                               torch.nn.Linear(5, 2))


def loss_fn(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids, y = torch.randint(0, 40, (16,), generator=g), torch.randn(16, 2, generator=g)
    return lambda: torch.nn.functional.mse_loss(net(ids), y)


def write_policy(path, model, base_model="small", seed=0, embedding_rows=8, scale_w2=1.0):
    """A random policy for ``model``'s trainable layout, saved in the library format."""
    layout = policy_blocks(model.named_parameters(), embedding_block_names(model))
    w = init_policy_weights(len(layout), torch.Generator().manual_seed(seed))
    w["w2"] = w["w2"] * scale_w2
    save_policy(path, w, make_schema(layout, base_model=base_model, embedding_rows=embedding_rows))
    return path


def test_policy_file_round_trip_gives_bit_equal_sigmas(tmp_path):
    net = small_net()
    write_policy(tmp_path / "p", net)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["policy.json", "policy.safetensors"]
    schema = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert schema["features"] == list(FEATURES) and schema["network"]["hidden"] == 64
    assert [b["embedding"] for b in schema["blocks"]] == [True, False, False, False, False, False, False]
    w = init_policy_weights(len(schema["blocks"]), torch.Generator().manual_seed(0))
    pol = load_policy(tmp_path / "p" / "policy.json")  # the schema file, the weights file or the dir all work
    x = torch.randn(len(schema["blocks"]), 5)
    assert torch.equal(policy_sigma(w, x), policy_sigma(pol.weights, x))
    assert bool((policy_sigma(w, x) >= 0).all())
    # re-ordered blocks get their own rows
    blocks = list(reversed(blocks_from_named(net.named_parameters())))
    w_re, flags = pol.for_blocks(blocks)
    assert torch.equal(policy_sigma(w_re, x.flip(0)), policy_sigma(w, x).flip(0)) and flags[-1] is True


def test_trace_normalisation_is_exact_and_gives_d_in_expectation(tmp_path):
    net = small_net()
    write_policy(tmp_path / "p", net, embedding_rows=8)
    m = zoplatform.make("zo-finetuner", policy=str(tmp_path / "p"))
    blocks = model_blocks(net)
    state = m.init(blocks)
    # the embedding (40 × 6) counts as 8 rows × 6; the rest at numel
    assert state.counts.tolist() == [48, 30, 5, 5, 5, 10, 2]
    sigma = m.sigma(state, blocks)
    assert float(sigma.std()) > 0.01  # a random policy: uneven σ
    _c, s = m.scales(state, sigma)
    d_eff = float(state.counts.sum())
    assert sum(n * si * si for n, si in zip(state.counts.tolist(), s)) == pytest.approx(d_eff, rel=1e-12)
    assert trace_scale(torch.ones(7), state.counts) == 1.0  # exactly: the identity policy is MeZO
    # empirically E‖cσ⊙z‖² = d (no embedding heuristic here: every entry counts)
    counts = torch.tensor([b.numel for b in blocks], dtype=torch.float64)
    c2 = trace_scale(sigma, counts)
    law, scratch = make_law("gaussian"), Scratch(1024)
    draws = torch.tensor([sum((c2 * float(sigma[i])) ** 2 * float((direction_tensor(b, seed, law, scratch) ** 2).sum())
                              for i, b in enumerate(blocks)) for seed in range(3000)], dtype=torch.float64)
    d = float(counts.sum())
    se = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - d) < 4 * se, (float(draws.mean()), d, se)


def test_identity_policy_is_bit_identical_to_mezo():
    def run(method):
        net = small_net()
        no_decay = zoplatform.no_decay_names(net)
        opt = zoplatform.optimizer(method, net.named_parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=5,
                                   no_decay=no_decay)
        for _ in range(15):
            opt.step(loss_fn(net))
        return [p.detach().clone() for p in net.parameters()], [r.losses for r in opt.trajectory.records]

    (wa, la), (wb, lb) = run("mezo"), run("zo-finetuner")
    assert la == lb and all(torch.equal(a, b) for a, b in zip(wa, wb))


@needs_data
def test_identity_policy_matches_mezo_on_a_tiny_language_model():
    from zoplatform.data import sample_splits
    from zoplatform.models import load_model
    from zoplatform.objectives import make_scorer

    batch = sample_splits("sst2", data_dir=DATA, num_train=8, num_dev=0, num_test=0, seed=0).train

    def run(method):
        model, tok = load_model("tiny:llama")
        scorer = make_scorer(model, tok)
        opt = zoplatform.optimizer(method, model.named_parameters(), lr=1e-3, eps=1e-2, seed=1)
        with torch.inference_mode():
            for _ in range(3):
                opt.step(lambda: scorer.loss(batch))
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run("mezo"), run("zo-finetuner")))


def test_a_policy_step_scales_each_block_by_c_sigma(tmp_path):
    net = small_net()
    write_policy(tmp_path / "p", net)
    blocks = model_blocks(net)
    m = zoplatform.make("zo-finetuner", policy=str(tmp_path / "p"), lr=1e-2, eps=1e-3)
    state = m.init(blocks)
    before = [b.param.detach().clone() for b in blocks]
    sigma = m.sigma(state, blocks)
    c, s = m.scales(state, sigma)
    new, rec = m.step(state, blocks, loss_fn(net), seed=123, lr=1e-2)
    g = rec.grad[0]
    law, scratch = make_law("gaussian"), Scratch(1 << 20)
    for i, b in enumerate(blocks):
        expect = before[i] - 1e-2 * g * s[i] * direction_tensor(b, 123, law, scratch)
        torch.testing.assert_close(b.param.detach(), expect, atol=1e-6, rtol=1e-5)
    assert new["t"] == 1 and new["prev_losses"].tolist() == list(rec.losses) and torch.equal(new["sigma"], sigma)
    assert rec.extra["trace_c"] == c
    # the recurrent inputs change σ at the next step
    assert not torch.equal(m.sigma(new, blocks), sigma)


def test_policy_trajectory_replays_and_resumes_bit_exactly(tmp_path):
    write_policy(tmp_path / "p", small_net())
    hyper = {"lr": 1e-2, "eps": 1e-3, "weight_decay": 0.05, "policy": str(tmp_path / "p")}

    def train(split=None):
        net = small_net()
        opt = zoplatform.optimizer("zo-finetuner", net.named_parameters(), seed=3, **hyper)
        for _ in range(split or 12):
            opt.step(loss_fn(net))
        if split is None:
            return net, opt
        sd, w = opt.state_dict(), {k: v.clone() for k, v in net.state_dict().items()}
        net2 = small_net(seed=9)
        net2.load_state_dict(w)
        opt2 = zoplatform.optimizer("zo-finetuner", net2.named_parameters(), seed=0, **hyper)
        opt2.load_state_dict(sd)
        for _ in range(12 - split):
            opt2.step(loss_fn(net2))
        return net2, opt2

    net, opt = train()
    resumed, _ = train(split=5)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), resumed.parameters()))
    path = opt.trajectory.save(tmp_path / "t.jsonl")
    traj = zoplatform.Trajectory.load(path)
    fresh = small_net()
    method = zoplatform.make(traj.method, **traj.config)
    state = zoplatform.replay(method, blocks_from_named(fresh.named_parameters()), traj.records)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh.parameters()))
    assert torch.equal(state["sigma"], opt.method_state["sigma"])


def test_a_policy_for_another_layout_or_model_is_refused(tmp_path):
    from zoplatform.models import load_model

    opt_model, _ = load_model("tiny:opt")
    llama, _ = load_model("tiny:llama")
    write_policy(tmp_path / "opt", opt_model, base_model="tiny:opt")
    m = zoplatform.make("zo-finetuner", policy=str(tmp_path / "opt"))
    with pytest.raises(ConfigError) as e:
        m.init(model_blocks(llama))
    msg = str(e.value)
    assert "meta-trained for 'tiny:opt'" in msg and "does not match" in msg and "\n" not in msg
    assert "'model.embed_tokens.weight'" in msg  # names the first tensor the policy does not know
    # same names, other shapes
    net = small_net()
    write_policy(tmp_path / "small", net)
    wide = torch.nn.Sequential(torch.nn.Embedding(40, 7), torch.nn.Linear(7, 5), torch.nn.LayerNorm(5),
                               torch.nn.Linear(5, 2))
    with pytest.raises(ConfigError, match=r"shape of '0.weight' is \[40, 7\] here but \[40, 6\]"):
        zoplatform.make("zo-finetuner", policy=str(tmp_path / "small")).init(model_blocks(wide))
    with pytest.raises(ConfigError, match="meta-trained for 'small', not for base_model='tiny:llama'"):
        zoplatform.make("zo-finetuner", policy=str(tmp_path / "small"), base_model="tiny:llama")


@pytest.mark.parametrize("setup,msg", [
    (lambda d: None, "does not exist"),
    (lambda d: (d.mkdir(), (d / "policy.pth").write_bytes(b"\x80\x04pickle")), "pickled .pth"),
    (lambda d: (d.mkdir(), (d / "policy.json").write_text("{}")), "lacks policy.safetensors"),
    (lambda d: (d.mkdir(), (d / "policy.json").write_text('{"format": "other"}'),
                (d / "policy.safetensors").write_bytes(b"x")), "not a zoplatform policy"),
])
def test_bad_policy_files_are_one_line_errors(tmp_path, setup, msg):
    d = tmp_path / "pol"
    setup(d)
    target = d / "policy.pth" if (d / "policy.pth").exists() else d
    with pytest.raises(ConfigError) as e:
        zoplatform.make("zo-finetuner", policy=str(target))
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_embedding_blocks_by_module_type_and_by_name_rule():
    from zoplatform.models import load_model

    model, _ = load_model("tiny:opt")
    assert embedding_block_names(model) == {"model.decoder.embed_tokens.weight",
                                            "model.decoder.embed_positions.weight"}
    # without a policy the name rule decides; rows × hidden, capped at the real rows
    m = zoplatform.make("zo-finetuner")
    blocks = model_blocks(model)
    state = m.init(blocks)
    flagged = {b.name for b, f in zip(blocks, state.embedding.tolist()) if f}
    assert flagged == embedding_block_names(model)
    i = [b.name for b in blocks].index("model.decoder.embed_tokens.weight")
    assert int(state.counts[i]) == min(DEFAULT_EMBEDDING_ROWS, 305) * 64
    assert effective_counts([(305, 64), (64,)], [True, True], 10) == [640, 64]  # 1-D: numel
    m2 = zoplatform.make("zo-finetuner", embedding_pattern=r"fc1\.weight$", embedding_rows=3)
    assert {b.name for b, f in zip(blocks, m2.init(blocks).embedding.tolist()) if f} == {f"model.decoder.layers.{k}.fc1.weight"
                                                                   for k in (0, 1)}
    with pytest.raises(ConfigError, match="embedding_pattern"):
        zoplatform.make("zo-finetuner", embedding_pattern="(")


def test_method_is_registered_with_its_paper():
    assert "zo-finetuner" in zoplatform.method_names()
    assert "2510.00419" in ZOFinetuner.paper


def write_scale_policy(path, model, sigma, base_model="small", embedding_rows=8):
    layout = policy_blocks(model.named_parameters(), embedding_block_names(model))
    save_policy(path, {"sigma": torch.as_tensor(sigma, dtype=torch.float32)},
                make_schema(layout, base_model=base_model, embedding_rows=embedding_rows, kind="scale"))
    return path


def test_a_scale_policy_step_scales_each_block_by_its_constant_c_sigma(tmp_path):
    net = small_net()
    sigma = [3.0, 0.5, 1.0, 2.0, 1.0, 0.25, 4.0]
    write_scale_policy(tmp_path / "p", net, sigma)
    pol = load_policy(tmp_path / "p")
    assert pol.kind == "scale" and pol.schema["features"] == [] and pol.schema["network"]["kind"] == "scale"
    blocks = model_blocks(net)
    m = zoplatform.make("zo-finetuner", policy=str(tmp_path / "p"), lr=1e-2, eps=1e-3)
    state = m.init(blocks)
    before = [b.param.detach().clone() for b in blocks]
    assert m.sigma(state, blocks).tolist() == sigma
    c, s = m.scales(state, m.sigma(state, blocks))
    assert c == pytest.approx(math.sqrt(float(state.counts.sum()) / sum(n * x * x for n, x in zip(state.counts.tolist(),
                                                                                               sigma))), rel=1e-12)
    new, rec = m.step(state, blocks, loss_fn(net), seed=7, lr=1e-2)
    law, scratch = make_law("gaussian"), Scratch(1 << 20)
    for i, b in enumerate(blocks):
        expect = before[i] - 1e-2 * rec.grad[0] * s[i] * direction_tensor(b, 7, law, scratch)
        torch.testing.assert_close(b.param.detach(), expect, atol=1e-6, rtol=1e-5)
    assert m.sigma(new, blocks).tolist() == sigma  # constant: the recurrent inputs do not change it


def test_policies_written_before_kinds_existed_load_as_the_papers_mlp(tmp_path):
    net = small_net()
    write_policy(tmp_path / "p", net)
    schema = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert schema["network"]["kind"] == "mlp"
    del schema["network"]["kind"]
    (tmp_path / "p" / "policy.json").write_text(json.dumps(schema))
    pol = load_policy(tmp_path / "p")
    assert pol.kind == "mlp" and set(pol.weights) == {"w1", "b1", "w2", "b2"}


@pytest.mark.parametrize("edit,msg", [
    (lambda sch, w: w.__setitem__("sigma", torch.tensor([1.0, -1.0] + [1.0] * 5)), "finite sigma > 0"),
    (lambda sch, w: w.__setitem__("sigma", torch.ones(3)), "has shape [3], expected [7]"),
    (lambda sch, w: sch["network"].__setitem__("kind", "transformer"), "policy kind 'transformer'"),
    (lambda sch, w: sch.__setitem__("features", ["mean"]), "uses features ['mean']"),
])
def test_bad_scale_policies_are_one_line_errors(tmp_path, edit, msg):
    from safetensors.torch import save_file

    net = small_net()
    write_scale_policy(tmp_path / "p", net, [1.0] * 7)
    schema = json.loads((tmp_path / "p" / "policy.json").read_text())
    w = {"sigma": torch.ones(7)}
    edit(schema, w)
    (tmp_path / "p" / "policy.json").write_text(json.dumps(schema))
    save_file(w, str(tmp_path / "p" / "policy.safetensors"))
    with pytest.raises(ConfigError) as e:
        zoplatform.make("zo-finetuner", policy=str(tmp_path / "p"))
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
