"""Classification objectives: candidate scoring for causal LMs, and heads.

Prompt protocol (MeZO, Malladi et al., NeurIPS 2023, arXiv 2305.17333, §1.5
of docs/algorithms.md): each example has a ``prompt`` and a tuple of
``candidates``.  A candidate's score is the **mean** log-probability of its
option tokens given the prompt (length-normalised); the loss is the
cross-entropy of the softmax over an example's candidate scores against the
gold index, averaged over the batch.  Prediction is the argmax score.

Candidate tokenisation (one rule, shared by every scorer here):

* context  = ``tokens(prompt)`` with the tokenizer's *leading* special
  tokens (BOS) and without trailing ones (an LM must not see EOS/[SEP]
  before the continuation it scores);
* options  = ``tokens(prompt + candidate)[len(tokens(prompt)):]`` (no
  special tokens) -- MeZO's ``option_len`` rule, which tokenises the
  candidate *in context* (so sentencepiece models do not get a spurious
  word-start marker); falls back to ``tokens(candidate)`` if that is empty;
* scored sequence = context + options.  Conditioning on exactly
  ``tokens(prompt)`` (rather than MeZO's joint tokenisation, identical
  unless BPE merges across the prompt/candidate boundary) is what lets all
  candidates share one prompt pass.
* truncation: the context is left-truncated (MeZO truncates from the left)
  so that context + the example's longest option fits ``max_length``
  (capped by the model's position limit).

Scorers (same API: ``scores``, ``loss``, ``predict``,
``forward_passes_per_call``):

* :class:`PromptScorer` -- the fast path used in the ZO hot loop.
* :class:`NaiveScorer` -- a reference: one full sequence per (example,
  candidate), batch of 1, full-vocabulary logits everywhere.  Slow; kept
  for parity tests and benchmarks.
* :class:`HeadScorer` -- head protocol (``*ForSequenceClassification``):
  scores are the classifier logits.

All scores and losses are fp32 (even for bf16/fp16 models) and
differentiable when autograd is on, so the first-order baseline can call
``loss(...).backward()``; ZO methods call them under
``torch.inference_mode()``.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import ZOError
from .types import Example

log = logging.getLogger(__name__)

__all__ = ["HeadScorer", "NaiveScorer", "PromptScorer", "Scorer", "make_scorer"]

_CACHE_LIMIT = 100_000  # tokenised examples kept per scorer (a few KB each at most)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers are injected
    in place, so calling it directly is equivalent and accepts every kwarg)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None and hasattr(model, "get_base_model"):
        for cfg in peft_config.values():
            if getattr(cfg, "is_prompt_learning", False):
                raise ZOError(f"peft {cfg.peft_type} adapters inject past key/values and are not "
                              "supported by the prompt scorers; use LoRA")
        return model.get_base_model()
    return model


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_labels(examples: Sequence[Example], n_classes: Sequence[int]) -> None:
    for ex, n in zip(examples, n_classes):
        if not 0 <= ex.label < n:
            raise ZOError(f"example {ex.uid or ex.prompt[:40]!r} has label {ex.label}, "
                          f"outside 0..{n - 1} ({n} classes)")


def _position_limit(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Tokens:
    """Tokenised prompt-protocol example: context ids and one id list per candidate."""

    __slots__ = ("context", "options")

    def __init__(self, context: list[int], options: list[list[int]]):
        self.context = context
        self.options = options


class _PromptEncoder:
    """Applies the module's candidate-tokenisation rule, batched and cached.

    Shared by :class:`PromptScorer` and :class:`NaiveScorer` so the fast and
    the reference path score exactly the same token sequences.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        # keyed by (prompt, candidates): label/uid do not change the tokens
        self._cache: dict[tuple, _Tokens] = {}
        # Leading special tokens (BOS) the tokenizer adds around a text.
        probe = "a"
        with_sp = tokenizer(probe, add_special_tokens=True)["input_ids"]
        without = tokenizer(probe, add_special_tokens=False)["input_ids"]
        self.prefix: list[int] = []
        for k in range(len(with_sp) - len(without) + 1):
            if with_sp[k:k + len(without)] == without:
                self.prefix = list(with_sp[:k])
                break

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _key(ex: Example) -> tuple:
        return (ex.prompt, tuple(ex.candidates))

    def encode(self, examples: Sequence[Example]) -> list[_Tokens]:
        keys = [self._key(ex) for ex in examples]
        todo = list({k: ex for k, ex in zip(keys, examples) if k not in self._cache}.values())
        if todo:
            if len(self._cache) + len(todo) > _CACHE_LIMIT:
                self._cache.clear()
            prompts = self._ids([ex.prompt for ex in todo])
            joint_texts = [ex.prompt + c for ex in todo for c in ex.candidates]
            joint = iter(self._ids(joint_texts))
            for ex, p in zip(todo, prompts):
                if not ex.candidates:
                    raise ZOError(f"example {ex.uid or ex.prompt[:40]!r} has no candidates; "
                                  "the prompt protocol needs at least one")
                options = []
                for cand in ex.candidates:
                    opt = list(next(joint)[len(p):])
                    if not opt:  # candidate merged into the prompt's last token
                        opt = list(self._ids([cand])[0])
                    if not opt:
                        raise ZOError(f"candidate {cand!r} of example "
                                      f"{ex.uid or ex.prompt[:40]!r} tokenises to nothing")
                    options.append(opt)
                context = self.prefix + list(p)
                budget = self.max_length - max(len(o) for o in options)
                if budget < 1:
                    raise ZOError(f"a candidate of example {ex.uid or ex.prompt[:40]!r} is "
                                  f"longer than max_length={self.max_length} tokens")
                if len(context) > budget:
                    context = context[-budget:]  # left-truncate, like MeZO
                if not context:
                    raise ZOError(f"example {ex.uid!r} has an empty prompt and the tokenizer "
                                  "adds no BOS token; nothing to condition on")
                self._cache[self._key(ex)] = _Tokens(context, options)
        return [self._cache[k] for k in keys]


class _BaseScorer:
    """Shared loss/predict on top of ``scores``."""

    forward_passes_per_call: int = 1

    def scores(self, examples: Sequence[Example]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _n_classes(self, examples: Sequence[Example], scores: torch.Tensor) -> list[int]:
        return [len(ex.candidates) for ex in examples]

    def loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """Mean cross-entropy of the candidate scores against the labels (fp32 scalar)."""
        scores = self.scores(examples)
        _check_labels(examples, self._n_classes(examples, scores))
        labels = torch.tensor([ex.label for ex in examples], device=scores.device)
        # -inf scores (missing candidates) get probability 0 and zero gradient.
        return F.cross_entropy(scores, labels)

    def predict(self, examples: Sequence[Example]) -> torch.LongTensor:
        """Index of the best-scoring candidate/class per example."""
        return self.scores(examples).argmax(dim=-1)

    @staticmethod
    def _check_batch(examples: Sequence[Example]) -> None:
        if len(examples) == 0:
            raise ZOError("cannot score an empty batch of examples")


# --------------------------------------------------------------------------
# prompt protocol: fast path
# --------------------------------------------------------------------------
class PromptScorer(_BaseScorer):
    """Fast candidate scorer for causal LMs (the ZO hot loop).

    * Pass 1 runs the left-padded prompts once (explicit ``position_ids =
      cumsum(mask) - 1`` so RoPE and learned absolute positions both ignore
      the padding) and computes vocabulary logits at the last prompt
      position only (``logits_to_keep=1``): that gives every candidate's
      first-token log-prob.  If all candidates are one token, that is the
      whole cost: ``forward_passes_per_call == 1``.
    * Pass 2 (only for candidates with >= 2 tokens) feeds all those
      candidates' tokens as one right-padded batch on top of the prompt KV
      cache, reordered so that each row sees its own example's prompt, and
      computes logits only for those option positions
      (``forward_passes_per_call == 2``).
    """

    def __init__(self, model, tokenizer, max_length: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self._lm = _unwrap(model)
        if self._lm.get_output_embeddings() is None:
            raise ZOError(f"{type(self._lm).__name__} has no language-model head; "
                          "use the 'head' protocol for classification models")
        limit = _position_limit(self._lm.config)
        self.max_length = min(max_length, limit) if limit else max_length
        self.encoder = _PromptEncoder(tokenizer, self.max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = inspect.signature(self._lm.forward).parameters
        self._keep_logits = "logits_to_keep" in params
        if not self._keep_logits:
            log.warning("%s.forward has no logits_to_keep: the fast scorer computes full logits",
                        type(self._lm).__name__)
        self.forward_passes_per_call = 1
        self.forward_calls = 0  # model forward invocations so far (all calls)

    def _forward(self, **kwargs):
        keep = kwargs.pop("logits_to_keep")
        if self._keep_logits:
            kwargs["logits_to_keep"] = keep
        out = self._lm(**kwargs, return_dict=True)
        self.forward_calls += 1
        if not self._keep_logits and keep:
            out.logits = out.logits[:, -keep:]
        return out

    def pad_lengths(self, examples: Sequence[Example]) -> tuple[int, int, int]:
        """(prompt length, continuation length, forward passes) that :meth:`scores` pads
        ``examples`` to.  Scoring a sub-batch padded to the full batch's lengths gives every
        example bit-identical scores (row results do not depend on the batch size, only on the
        padded shape): what data-parallel shards rely on (:mod:`zoplatform.distributed`)."""
        toks = self.encoder.encode(examples)
        lc = max((len(o) - 1 for t in toks for o in t.options), default=0)
        return max(len(t.context) for t in toks), lc, 2 if lc > 0 else 1

    def scores(self, examples: Sequence[Example], pad_to: tuple[int, int] | None = None) -> torch.Tensor:
        """``[B, C_max]`` fp32 mean option log-probs; ``-inf`` where an example
        has fewer than ``C_max`` candidates.  ``pad_to``: minimum (prompt, continuation)
        padded lengths (see :meth:`pad_lengths`)."""
        self._check_batch(examples)
        toks = self.encoder.encode(examples)
        device = _device(self._lm)
        B = len(toks)
        C = max(len(t.options) for t in toks)

        # ---- pass 1: prompts, left-padded; logits at the last position only
        ctx_len = [len(t.context) for t in toks]
        Lp = max(max(ctx_len), pad_to[0] if pad_to else 0)
        ids = torch.full((B, Lp), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, Lp), dtype=torch.long)
        for b, t in enumerate(toks):
            ids[b, Lp - len(t.context):] = torch.tensor(t.context)
            mask[b, Lp - len(t.context):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        multi = [(b, c) for b, t in enumerate(toks) for c, o in enumerate(t.options) if len(o) > 1]
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                            use_cache=bool(multi), logits_to_keep=1)
        last = out.logits[:, -1].float().log_softmax(-1)  # [B, V]

        first = torch.zeros((B, C), dtype=torch.long)
        length = torch.ones((B, C))
        valid = torch.zeros((B, C), dtype=torch.bool)
        for b, t in enumerate(toks):
            for c, o in enumerate(t.options):
                first[b, c] = o[0]
                length[b, c] = len(o)
                valid[b, c] = True
        total = last.gather(1, first.to(device))  # first-token log-probs [B, C]

        # ---- pass 2: tokens 1.. of multi-token candidates on the prompt cache
        if multi:
            R = len(multi)
            Lc = max(max(len(toks[b].options[c]) - 1 for b, c in multi), pad_to[1] if pad_to else 0)
            cand = torch.full((R, Lc), self.pad_id, dtype=torch.long)
            target = torch.zeros((R, Lc), dtype=torch.long)
            cmask = torch.zeros((R, Lc), dtype=torch.long)
            for r, (b, c) in enumerate(multi):
                o = toks[b].options[c]
                # input o[:-1] predicts o[1:]; o[0] was predicted by pass 1
                cand[r, : len(o) - 1] = torch.tensor(o[:-1])
                target[r, : len(o) - 1] = torch.tensor(o[1:])
                cmask[r, : len(o) - 1] = 1
            rows = torch.tensor([b for b, _ in multi], device=device)
            cache = out.past_key_values
            cache.reorder_cache(rows)  # row r sees the prompt of example multi[r][0]
            cand, target, cmask = cand.to(device), target.to(device), cmask.to(device)
            attn = torch.cat([mask.index_select(0, rows), cmask], dim=1)
            cpos = torch.tensor(ctx_len, device=device).index_select(0, rows)[:, None] \
                + torch.arange(Lc, device=device)[None, :]
            out2 = self._forward(input_ids=cand, attention_mask=attn, position_ids=cpos,
                                 past_key_values=cache, use_cache=True, logits_to_keep=0)
            logits = out2.logits.float()  # [R, Lc, V], option positions only
            # log p(target) = logit[target] - logsumexp(logits): avoids a second [R, Lc, V] tensor
            lp = logits.gather(2, target[..., None]).squeeze(-1) - logits.logsumexp(-1)
            rest = (lp * cmask).sum(1)  # [R]
            extra = torch.zeros((B, C), device=device, dtype=rest.dtype)
            b_idx = torch.tensor([b for b, _ in multi], device=device)
            c_idx = torch.tensor([c for _, c in multi], device=device)
            total = total + extra.index_put((b_idx, c_idx), rest)
            self.forward_passes_per_call = 2
        else:
            self.forward_passes_per_call = 1

        scores = total / length.to(device)
        return scores.masked_fill(~valid.to(device), float("-inf"))


# --------------------------------------------------------------------------
# prompt protocol: reference path
# --------------------------------------------------------------------------
class NaiveScorer(_BaseScorer):
    """Reference scorer: every (example, candidate) is its own batch-of-1
    forward over context + option with full-vocabulary logits over the whole
    sequence -- the textbook computation, used to check and time the fast path."""

    def __init__(self, model, tokenizer, max_length: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        limit = _position_limit(_unwrap(model).config)
        self.max_length = min(max_length, limit) if limit else max_length
        self.encoder = _PromptEncoder(tokenizer, self.max_length)
        self.forward_passes_per_call = 0
        self.forward_calls = 0

    def scores(self, examples: Sequence[Example]) -> torch.Tensor:
        self._check_batch(examples)
        toks = self.encoder.encode(examples)
        device = _device(self.model)
        C = max(len(t.options) for t in toks)
        rows = []
        n = 0
        for t in toks:
            row = []
            for o in t.options:
                seq = torch.tensor([t.context + o], device=device)
                logits = self.model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
                n += 1
                logp = logits[0].float().log_softmax(-1)  # [L, V]
                start = len(t.context)
                # token at position start+j is predicted by logits at start+j-1
                picked = logp[start - 1: start - 1 + len(o)].gather(
                    1, torch.tensor(o, device=device)[:, None])
                row.append(picked.mean())
            row += [torch.tensor(float("-inf"), device=device)] * (C - len(row))
            rows.append(torch.stack(row))
        self.forward_passes_per_call = n
        self.forward_calls += n
        return torch.stack(rows)


# --------------------------------------------------------------------------
# head protocol
# --------------------------------------------------------------------------
class HeadScorer(_BaseScorer):
    """Head protocol (LOREN-style): ``model(**tokenizer(text, text_pair)).logits``.

    Scores are the fp32 classifier logits ``[B, num_labels]``; ``label`` is
    the class index.  ``Example.text`` is used (``prompt`` if ``text`` is
    empty); ``text_pair`` is the optional second segment.
    """

    def __init__(self, model, tokenizer, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        base = _unwrap(model)
        limit = _position_limit(base.config)
        self.max_length = min(max_length, limit) if limit else max_length
        self.num_labels = int(getattr(base.config, "num_labels", 0) or 0)
        self._cache: dict[tuple, dict] = {}  # (text, text_pair) -> token ids
        self.forward_passes_per_call = 1
        self.forward_calls = 0

    def _encode(self, examples: Sequence[Example]) -> dict:
        keys = [(ex.text or ex.prompt, ex.text_pair) for ex in examples]
        todo = list({k: ex for k, ex in zip(keys, examples) if k not in self._cache})
        if todo:
            if len(self._cache) + len(todo) > _CACHE_LIMIT:
                self._cache.clear()
            texts = [t for t, _ in todo]
            pairs = [p for _, p in todo]
            if all(p is None for p in pairs):
                enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
                rows = [{k: enc[k][i] for k in enc} for i in range(len(todo))]
            else:  # mixed single/pair inputs: one call per example
                rows = [dict(self.tokenizer(t, p, truncation=True, max_length=self.max_length))
                        for t, p in zip(texts, pairs)]
            for key, row in zip(todo, rows):
                self._cache[key] = row
        batch = self.tokenizer.pad([self._cache[k] for k in keys], return_tensors="pt")
        return {k: v.to(_device(self.model)) for k, v in batch.items()}

    def _n_classes(self, examples, scores):
        return [scores.shape[-1]] * len(examples)

    def scores(self, examples: Sequence[Example]) -> torch.Tensor:
        self._check_batch(examples)
        out = self.model(**self._encode(examples))
        self.forward_calls += 1
        return out.logits.float()


Scorer = PromptScorer | NaiveScorer | HeadScorer


def make_scorer(model, tokenizer, protocol: str = "prompt", max_length: int | None = None):
    """The fast scorer for ``protocol``: :class:`PromptScorer` or :class:`HeadScorer`.

    ``max_length`` defaults to 2048 tokens (MeZO) for prompts, 512 for heads;
    both are capped by the model's position limit.
    """
    if protocol == "prompt":
        return PromptScorer(model, tokenizer, max_length=max_length or 2048)
    if protocol == "head":
        return HeadScorer(model, tokenizer, max_length=max_length or 512)
    raise ZOError(f"unknown protocol {protocol!r}; allowed: prompt, head")
