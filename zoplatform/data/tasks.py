"""Task registry: files, prompt templates, label words and MeZO's sampling protocol.

Prompts and candidates follow MeZO's OPT templates (Malladi et al., 2023,
"Fine-Tuning Language Models with Just Forward Passes", arXiv 2305.17333,
``large_models/templates.py``): the model scores each candidate string as a
continuation of ``prompt``.  Prompts ending in ``\\n`` take bare words
("Yes"), the others take words with their leading space (" great").
SST-5 and TREC are not in MeZO's OPT suite: they use LM-BFF's label words
(Gao et al., 2021) with our own causal-LM prompt.

Sampling (MeZO §1.3 of docs/algorithms.md): train+dev are the first
``num_train + num_dev`` rows of a seeded permutation of the train split (dev =
the last ``num_dev``); test is the first ``num_test`` rows of a permutation of
the validation split with the same seed (all of it when smaller).  The
permutation is ``numpy.random.RandomState(seed).permutation(n)``, the stream
MeZO draws from after ``np.random.seed(seed)``, so the sampled indices match
MeZO's for the same row order, and are identical across processes.

Every :class:`Example` also carries head-protocol fields (``text``,
``text_pair``; LOREN-style ``*ForSequenceClassification``) and a ``uid``
``task:split:row`` (0-based data row; ``row.k`` for the k-th example of a row
that expands to several, e.g. MultiRC answers).

Single-pool tasks (MR, CR, SUBJ, MPQA: one labelled file, no official split;
``Task.holdout`` > 0): the file is split once into a *train* pool and a
held-out *test* pool by :func:`holdout_rows`, a fixed, label-stratified rule
of the rows' contents only -- never the run seed, the file's row order or numpy.
``load_split(task, "train")`` is the train pool (file order) and
``load_split(task, "validation")`` the test pool (in the rule's fixed order);
uids are ``task:train:row`` / ``task:test:row`` with ``row`` the 0-based file
row.  ``sample_splits`` draws train/dev from the train pool by seed as for
every task, and test = the first ``num_test`` rows of the test pool, so the
test set is the same for every seed and method (paired statistics).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoplatform.data.loading import HUB, read_hub_rows, read_rows, resolve_data_dir, where
from zoplatform.errors import ConfigError, DataError, ZOError
from zoplatform.types import Example, Splits

SPLITS = ("train", "validation")
Row = Mapping[str, Any]


@dataclass(frozen=True, eq=False)  # eq=False: identity hash, so a Task can key the load cache
class Task:
    """One declarative task entry.

    ``files`` maps split -> path under the data dir; ``fields`` are required in
    every record (``label`` included); ``labels`` maps the raw label value (type
    and value, so JSON ``true`` is not ``1``) to the candidate index, which is
    also the class index for the head protocol.  ``candidates`` is empty when
    they depend on the row (COPA): ``row_candidates`` builds them.  ``records``
    turns one file row into one or more flat records (MultiRC, WSC); by default
    a row is a record.
    ``hub_labels`` maps the Hub's integer class ids back to the local raw values.
    """

    name: str
    files: Mapping[str, str]
    format: str  # "jsonl" | "tsv" | "lines" (see loading.py)
    fields: tuple[str, ...]
    prompt: Callable[[Row], str]
    candidates: tuple[str, ...]
    labels: Mapping[Any, int]
    text: Callable[[Row], str]
    text_pair: Callable[[Row], str] | None = None
    row_candidates: Callable[[Row], tuple[str, ...]] | None = None
    hub_id: tuple[str, ...] | None = None
    hub_labels: tuple | None = None
    encoding: str = "utf-8"
    records: Callable[[Row], list[Row]] | None = None
    train_optional: bool = False  # train file may be absent: sample_splits carves from validation
    holdout: int = 0  # > 0: one file (files["train"] == files["validation"]); rows held out as test (holdout_rows)

    @property
    def num_labels(self) -> int:
        return len(set(self.labels.values()))

    def candidates_for(self, record: Row) -> tuple[str, ...]:
        return self.row_candidates(record) if self.row_candidates else self.candidates


class _RowError(Exception):
    """A problem with one record; re-raised as DataError with file and row."""


def _get(obj: Any, key: str, path: str | None = None) -> Any:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if value is None:
        raise _RowError(f"missing field {path or key!r}")
    return value


def _pick(record: Row, field: str, table: Mapping[str, str]) -> str:
    value = _get(record, field)
    if value not in table:
        raise _RowError(f"field {field!r}: unknown value {value!r} (expected one of: {', '.join(map(repr, table))})")
    return table[value]


# --- row -> records ----------------------------------------------------------------

def _wsc_records(row: Row) -> list[Row]:
    if "target" not in row and "span1_text" in row:  # Hub schema: spans already flat
        return [row]
    target = _get(row, "target")
    return [{**row, "span1_text": _get(target, "span1_text", "target.span1_text"),
             "span2_text": _get(target, "span2_text", "target.span2_text")}]


def _multirc_records(row: Row) -> list[Row]:
    """One record per (paragraph, question, answer), as MeZO/HF flatten MultiRC."""
    if "paragraph" in row:  # Hub schema: already one row per answer
        return [row]
    passage = _get(row, "passage")
    paragraph = _get(passage, "text", "passage.text")
    out = []
    for qi, q in enumerate(_get(passage, "questions", "passage.questions")):
        question = _get(q, "question", f"passage.questions[{qi}].question")
        for ai, a in enumerate(_get(q, "answers", f"passage.questions[{qi}].answers")):
            at = f"passage.questions[{qi}].answers[{ai}]"
            out.append({"paragraph": paragraph, "question": question,
                        "answer": _get(a, "text", f"{at}.text"), "label": _get(a, "label", f"{at}.label")})
    return out


# --- templates with logic (the one-liners live in the registry) ----------------------

def _boolq_prompt(r: Row) -> str:
    # MeZO BoolQTemplateV3: question gets "?" and a capital first letter
    q = r["question"]
    q = q if q.endswith("?") else q + "?"
    return f"{r['passage']} {q[0].upper()}{q[1:]}\n"


def _copa_prompt(r: Row) -> str:
    premise = r["premise"].rstrip()
    premise = premise.removesuffix(".")
    return premise + _pick(r, "question", {"effect": " so ", "cause": " because "})


def _then(suffix: str) -> Callable[[Row], str]:
    """``{sentence} {suffix}`` (LM-BFF's ``*sent_0*_It_was*mask*``); an empty sentence (CR and MPQA
    have a few) gives just the suffix."""
    return lambda r: f"{r['text'].strip()} {suffix}".lstrip()


def _pool(path: str) -> dict[str, str]:
    return {"train": path, "validation": path}


def _binary_lines(name: str, path: str, then: str, words: tuple[str, str], encoding: str = "utf-8",
                  holdout: int = 2000) -> Task:
    """A one-file "label text" task with labels 0/1 (MeZO's SST-2-style prompt: the word continues
    ``text + then``); ``holdout`` rows of the file are the test pool."""
    return Task(name, _pool(path), "lines", ("text", "label"), prompt=_then(then), candidates=words,
                labels={"0": 0, "1": 1}, text=lambda r: r["text"].strip(), encoding=encoding, holdout=holdout)


def _copa_choice(choice: str) -> str:
    # continues the premise mid-sentence: lower-case the first word unless it is "I"
    first, sep, rest = choice.partition(" ")
    return (first if first == "I" else first.lower()) + sep + rest


_YES_NO = ("Yes", "No")
_NO_YES = ("No", "Yes")
_BOOL_NO_YES = {False: 0, True: 1}
_GLUE = "glue"
_SUPER = "super_glue"


def _sg(task: str) -> dict[str, str]:
    return {"train": f"{task}/train.jsonl", "validation": f"{task}/val.jsonl"}


_ENTRIES = (
    Task("sst2", {"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"}, "tsv", ("sentence", "label"),
         prompt=lambda r: f"{r['sentence'].strip()} It was",  # GLUE sentences end with a space
         candidates=(" terrible", " great"), labels={"0": 0, "1": 1},
         text=lambda r: r["sentence"].strip(), hub_id=(_GLUE, "sst2"), hub_labels=("0", "1")),
    Task("rte", _sg("rte"), "jsonl", ("premise", "hypothesis", "label"),
         prompt=lambda r: f"{r['premise']}\nDoes this mean that \"{r['hypothesis']}\" is true? Yes or No?\n",
         candidates=_YES_NO, labels={"entailment": 0, "not_entailment": 1},
         text=lambda r: r["premise"], text_pair=lambda r: r["hypothesis"],
         hub_id=(_SUPER, "rte"), hub_labels=("entailment", "not_entailment")),
    Task("cb", _sg("cb"), "jsonl", ("premise", "hypothesis", "label"),
         prompt=lambda r: f"Suppose {r['premise']} Can we infer that \"{r['hypothesis']}\"? Yes, No, or Maybe?\n",
         candidates=("Yes", "No", "Maybe"), labels={"entailment": 0, "contradiction": 1, "neutral": 2},
         text=lambda r: r["premise"], text_pair=lambda r: r["hypothesis"],
         hub_id=(_SUPER, "cb"), hub_labels=("entailment", "contradiction", "neutral")),
    # only val.jsonl is shipped (train: 9,427 rows, not obtainable): see sample_splits.
    # SuperGLUE passages start "Title -- "; MeZO read google/boolq, whose passages do not.
    Task("boolq", _sg("boolq"), "jsonl", ("passage", "question", "label"),
         prompt=_boolq_prompt, candidates=_YES_NO, labels={True: 0, False: 1},
         text=lambda r: r["passage"], text_pair=lambda r: r["question"],
         hub_id=(_SUPER, "boolq"), hub_labels=(False, True), train_optional=True),
    Task("wic", _sg("wic"), "jsonl", ("word", "sentence1", "sentence2", "label"),
         prompt=lambda r: (f"Does the word \"{r['word']}\" have the same meaning in these two sentences? "
                           f"Yes, No?\n{r['sentence1']}\n{r['sentence2']}\n"),
         candidates=_NO_YES, labels=_BOOL_NO_YES,
         # head: prefix the target word, else the classifier cannot know which word is asked about
         text=lambda r: f"{r['word']}: {r['sentence1']}", text_pair=lambda r: r["sentence2"],
         hub_id=(_SUPER, "wic"), hub_labels=(False, True)),
    Task("wsc", _sg("wsc"), "jsonl", ("text", "span1_text", "span2_text", "label"),
         prompt=lambda r: (f"{r['text']}\nIn the previous sentence, does the pronoun \"{r['span2_text'].lower()}\" "
                           f"refer to {r['span1_text']}? Yes or No?\n"),
         candidates=_NO_YES, labels=_BOOL_NO_YES, records=_wsc_records,
         text=lambda r: r["text"], text_pair=lambda r: f"{r['span2_text']} refers to {r['span1_text']}",
         hub_id=(_SUPER, "wsc.fixed"), hub_labels=(False, True)),  # HF's config with corrected span indices
    Task("copa", _sg("copa"), "jsonl", ("premise", "choice1", "choice2", "question", "label"),
         prompt=_copa_prompt, candidates=(), labels={0: 0, 1: 1},
         row_candidates=lambda r: (_copa_choice(r["choice1"]), _copa_choice(r["choice2"])),
         # head: no natural sentence pair; the class is the index of the right choice
         text=lambda r: r["premise"], text_pair=lambda r: f"{r['question']}: {r['choice1']} {r['choice2']}",
         hub_id=(_SUPER, "copa")),
    Task("multirc", _sg("multirc"), "jsonl", ("paragraph", "question", "answer", "label"),
         prompt=lambda r: (f"{r['paragraph']}\nQuestion: {r['question']}\n"
                           f"I found this answer \"{r['answer']}\". Is that correct? Yes or No?\n"),
         candidates=_NO_YES, labels={0: 0, 1: 1}, records=_multirc_records,
         text=lambda r: r["paragraph"], text_pair=lambda r: f"{r['question']} {r['answer']}",
         hub_id=(_SUPER, "multirc")),
    # SST-5: LM-BFF's five words on MeZO's SST-2 prompt.  The fine-grained split has a
    # dev file too, but like LM-BFF we evaluate on stsa.fine.test, so "validation" = test.
    Task("sst5", {"train": "sst5/stsa.fine.train", "validation": "sst5/stsa.fine.test"}, "lines", ("text", "label"),
         prompt=lambda r: f"{r['text'].strip()} It was",
         candidates=(" terrible", " bad", " okay", " good", " great"), labels={str(i): i for i in range(5)},
         text=lambda r: r["text"].strip()),
    # TREC: our own prompt (not in MeZO) with LM-BFF's words; the file's ids are
    # 0=DESC 1=ENTY 2=ABBR 3=HUM 4=LOC 5=NUM, and LM-BFF calls ABBR "Expression".
    # "validation" = the official 500-question test set (TREC has no dev set).
    Task("trec", {"train": "trec/TREC.train.all", "validation": "trec/TREC.test.all"}, "lines", ("text", "label"),
         prompt=lambda r: f"{r['text'].strip()} The answer is about",
         candidates=(" Description", " Entity", " Expression", " Human", " Location", " Number"),
         labels={str(i): i for i in range(6)}, text=lambda r: r["text"].strip(), encoding="latin-1"),
    # MR, CR, SUBJ, MPQA: LM-BFF's templates and label words (Gao et al., 2021, Table 1 and its
    # run_experiment.sh: "*sent_0*_It_was*mask*", "*sent_0*_This_is*mask*") in MeZO's causal form of
    # SST-2's prompt (the word continues the prompt; no final "." is scored).  One labelled file
    # each, no official split: ``holdout`` rows are held out as the test pool (2,000; CR 1,000 of
    # its 3,775 rows, leaving 2,775 for MeZO's 1,000 + 500 train/dev).
    # MR and SUBJ are Windows-1252, not latin-1: their 0x85/0x91/0x96/0x97 bytes are the
    # punctuation "…", "‘", "–", "—" (latin-1 would make them C1 control characters); every
    # other byte decodes as in latin-1.  CR and MPQA are ASCII.
    _binary_lines("mr", "mr/rt-polarity.all", "It was", (" terrible", " great"), "cp1252"),  # 0 neg, 1 pos
    _binary_lines("cr", "cr/custrev.all", "It was", (" terrible", " great"), holdout=1000),  # 0 neg, 1 pos
    _binary_lines("subj", "subj/subj.all", "This is", (" subjective", " objective"), "cp1252"),  # 0 subj, 1 obj
    _binary_lines("mpqa", "mpqa/mpqa.all", "It was", (" terrible", " great")),  # 0 negative, 1 positive
)
# sst5/trec have no hub_id on purpose: the Hub copies (SetFit/sst5, CogComp/trec) use other
# field names and, for TREC, another label order than these files.


def _registry(tasks: tuple[Task, ...]) -> dict[str, Task]:
    out: dict[str, Task] = {}
    for t in tasks:
        if t.name in out:
            raise ValueError(f"duplicate task name {t.name!r}")
        out[t.name] = t
    return out


TASKS: dict[str, Task] = _registry(_ENTRIES)


def get_task(name: str | Task) -> Task:
    """Look a task up by name (case-insensitive); a Task passes through."""
    if isinstance(name, Task):
        return name
    task = TASKS.get(name.lower()) if isinstance(name, str) else None
    if task is None:
        raise ZOError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return task


# --- loading -------------------------------------------------------------------------

def _label_index(task: Task, raw: Any) -> int:
    if raw == "":  # a TSV or `<label> <text>` row without its label
        raise _RowError("missing field 'label'")
    for key, idx in task.labels.items():
        if type(key) is type(raw) and key == raw:  # strict: JSON true must not match 1
            return idx
    raise _RowError(f"field 'label': unknown value {raw!r} (expected one of: {', '.join(map(repr, task.labels))})")


def _build(task: Task, split: str, rows: list, lines: list[int] | None, display: str) -> tuple[Example, ...]:
    out = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise _RowError(f"expected an object, got {type(row).__name__}")
            records = task.records(row) if task.records else [row]
            for k, r in enumerate(records):
                for f in task.fields:  # empty strings are legal (MultiRC train has 3 empty answers)
                    _get(r, f)
                uid = f"{task.name}:{split}:{i}" if len(records) == 1 else f"{task.name}:{split}:{i}.{k}"
                out.append(Example(
                    prompt=task.prompt(r), candidates=task.candidates_for(r), label=_label_index(task, r["label"]),
                    text=task.text(r), text_pair=task.text_pair(r) if task.text_pair else None, uid=uid,
                ))
        except _RowError as exc:
            raise DataError(f"{display} {where(i + 1, lines[i] if lines else None)}: {exc}") from None
    return tuple(out)


@functools.lru_cache(maxsize=32)
def _load_file(task: Task, split: str, path: str, mtime_ns: int, size: int) -> tuple[Example, ...]:
    # mtime/size are part of the key so an edited file is re-read
    display = task.files[split]
    rows, lines = read_rows(Path(path), task.format, task.encoding, display)
    return _build(task, split, rows, lines, display)


def holdout_rows(texts: list[str], labels: list[int], size: int, salt: str) -> tuple[list[int], list[int]]:
    """Split rows into (train pool, test pool) indices by a fixed rule of the rows' contents alone.

    Stratified: label ``c`` gets a quota of ``size * n_c / n`` test rows (rounded by
    largest remainder, so the quotas sum to ``size``).  Rows are grouped by
    identical text (MPQA repeats many phrases, some with both labels; CR a few
    sentences) and the groups ranked by ``sha256(salt + "\\0" + text)``.  Walking
    the groups in rank order, a group joins the test pool when it fits in every
    label's remaining quota; the walk stops when all quotas are full.  So the
    test pool has exactly ``size`` rows with the labels in the file's
    proportions, every copy of a text is on one side (no text is in both
    pools), and nothing depends on a seed, on numpy, or on the row order of the
    file.  Returns the train pool in row order and the test pool in a fixed
    pseudo-random order of its rows (ranked by ``sha256(salt, text, copy
    number)``, so a repeated text is spread out), whose first ``k`` rows are a
    fixed random sample of ``k``.
    """
    n = len(texts)
    counts: dict[int, int] = {}
    for c in labels:
        counts[c] = counts.get(c, 0) + 1
    exact = {c: size * k / n for c, k in counts.items()}
    quota = {c: int(q) for c, q in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))
    for c in by_remainder[:size - sum(quota.values())]:
        quota[c] += 1
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t, []).append(i)
    ranked = sorted(groups.items(), key=lambda kv: hashlib.sha256(f"{salt}\0{kv[0]}".encode()).hexdigest())
    test: list[int] = []
    for _, rows in ranked:
        if len(test) == size:
            break
        need: dict[int, int] = {}
        for i in rows:
            need[labels[i]] = need.get(labels[i], 0) + 1
        if all(k <= quota[c] for c, k in need.items()):
            test.extend(rows)
            for c, k in need.items():
                quota[c] -= k
    if len(test) < size:
        raise DataError(f"{salt}: cannot hold out {size} test rows from {n} rows")
    held = set(test)
    copy: dict[str, int] = {}
    keys = {}
    for i in sorted(test):
        copy[texts[i]] = copy.get(texts[i], -1) + 1
        keys[i] = hashlib.sha256(f"{salt}\0{texts[i]}\0{copy[texts[i]]}".encode()).hexdigest()
    return [i for i in range(n) if i not in held], sorted(test, key=keys.__getitem__)


@functools.lru_cache(maxsize=16)
def _load_pools(task: Task, path: str, mtime_ns: int, size: int) -> dict[str, tuple[Example, ...]]:
    """The train and test pools of a single-file task (uids ``task:train:row`` / ``task:test:row``)."""
    display = task.files["train"]
    rows, lines = read_rows(Path(path), task.format, task.encoding, display)
    pool = _build(task, "pool", rows, lines, display)
    if len(pool) <= task.holdout:
        raise DataError(f"{display}: {len(pool)} rows, too few to hold out {task.holdout} test rows")
    train, test = holdout_rows([e.text for e in pool], [e.label for e in pool], task.holdout, task.name)
    return {
        "train": tuple(dataclasses.replace(pool[i], uid=f"{task.name}:train:{i}") for i in train),
        "validation": tuple(dataclasses.replace(pool[i], uid=f"{task.name}:test:{i}") for i in test),
    }


@functools.lru_cache(maxsize=32)
def _load_hub(task: Task, split: str) -> tuple[Example, ...]:
    display = f"hub:{'/'.join(task.hub_id)}[{split}]"
    rows = read_hub_rows(task.hub_id, split)
    if task.hub_labels is not None:
        for i, row in enumerate(rows):
            lab = row.get("label")
            if not isinstance(lab, int) or not 0 <= lab < len(task.hub_labels):
                raise DataError(f"{display} row {i + 1}: field 'label': unknown value {lab!r}")
            row["label"] = task.hub_labels[lab]
    return _build(task, split, rows, None, display)


def _split_path(task: Task, split: str, data_dir: str | Path | None) -> Path:
    if split not in SPLITS:
        raise ZOError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return resolve_data_dir(data_dir) / task.files[split]


def load_split(task: str | Task, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """All examples of one split, in file order (single-pool tasks: see the module docstring).

    ``data_dir``: see :func:`resolve_data_dir`; the string ``"hub"`` reads
    ``task.hub_id`` from the Hugging Face Hub instead (needs network).
    Results are cached in-process per (task, split, file version).
    """
    t = get_task(task)
    if data_dir == HUB:
        if split not in SPLITS:
            raise ZOError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if t.hub_id is None:
            raise DataError(f"task {t.name!r} has no Hugging Face Hub id; pass --data-dir DIR or set ZO_DATA_DIR")
        return list(_load_hub(t, split))
    path = _split_path(t, split, data_dir)
    if not path.is_file():
        hint = " (sample_splits carves train/dev/test from validation instead)" if t.train_optional else ""
        raise DataError(f"{t.name} {split}: data file not found: {path}{hint}")
    st = path.stat()
    if t.holdout:
        return list(_load_pools(t, str(path), st.st_mtime_ns, st.st_size)[split])
    return list(_load_file(t, split, str(path), st.st_mtime_ns, st.st_size))


# --- sampling ------------------------------------------------------------------------

def _permutation(n: int, seed: int) -> list[int]:
    # the legacy RandomState stream is frozen by numpy, so indices never change across versions
    return np.random.RandomState(seed).permutation(n).tolist()


def _check_counts(**counts: int) -> None:
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
    if counts["seed"] >= 2**32:
        raise ConfigError(f"seed must be below 2**32, got {counts['seed']}")


def sample_splits(
    task: str | Task,
    data_dir: str | Path | None = None,
    num_train: int = 1000,
    num_dev: int = 500,
    num_test: int = 1000,
    seed: int = 0,
) -> Splits:
    """Seeded train/dev/test examples per MeZO's protocol (see module docstring).

    Raises DataError when ``num_train + num_dev`` exceeds the train split (CB has
    250 train rows, COPA 400: MeZO's setting there is dev=100, i.e. 150/300 train).
    """
    t = get_task(task)
    _check_counts(num_train=num_train, num_dev=num_dev, num_test=num_test, seed=seed)
    need = num_train + num_dev
    valid = load_split(t, "validation", data_dir)
    if t.train_optional and data_dir != HUB and not _split_path(t, "train", data_dir).is_file():
        return _carve(t, valid, num_train, num_dev, num_test, seed)

    train = load_split(t, "train", data_dir)
    if need > len(train):
        # MeZO's code does not fail here: it takes every row, dev = the last num_dev and
        # train = the rest (WSC, 554 rows, with 1000/500 trains on 54); we make it explicit
        source = (f"train pool ({t.files['train']} less its {t.holdout} held-out test rows)" if t.holdout
                  else f"train split ({t.files['train']})")
        raise DataError(
            f"{t.name}: num_train + num_dev = {num_train} + {num_dev} = {need} exceeds the {len(train)} "
            f"examples of its {source}; lower num_train or num_dev "
            f"(e.g. num_train={max(len(train) - min(num_dev, 100), 0)}, num_dev={min(num_dev, 100)})"
        )
    picked = [train[i] for i in _permutation(len(train), seed)[:need]]
    if t.holdout:  # the test pool's fixed order: the same test set for every seed
        test = valid[:num_test]
    else:
        test = [valid[i] for i in _permutation(len(valid), seed)[:num_test]]
    note = ""
    if len(valid) < num_test:
        pool = "held-out test" if t.holdout else "validation"
        note = f"test = all {len(valid)} {pool} examples of {t.name} (fewer than num_test={num_test})"
    return Splits(train=picked[:num_train], dev=picked[num_train:], test=test, note=note)


def _carve(t: Task, valid: list[Example], num_train: int, num_dev: int, num_test: int, seed: int) -> Splits:
    """Disjoint train/dev/test from the validation split (BoolQ: no local train file)."""
    total = num_train + num_dev + num_test
    if total > len(valid):
        raise DataError(
            f"{t.name}: no train file ({t.files['train']}), so train/dev/test are carved from the "
            f"{len(valid)} validation examples, but num_train + num_dev + num_test = {total} exceeds them"
        )
    perm = _permutation(len(valid), seed)
    test = [valid[i] for i in perm[:num_test]]
    train = [valid[i] for i in perm[num_test:num_test + num_train]]
    dev = [valid[i] for i in perm[num_test + num_train:total]]
    note = (
        f"{t.name}: {t.files['train']} is not available, so train ({num_train}), dev ({num_dev}) and test "
        f"({num_test}) were sampled disjointly from the {len(valid)}-example validation split (seed {seed}); "
        "test is not the full official validation set, so scores are not directly comparable to MeZO's."
    )
    return Splits(train=train, dev=dev, test=test, note=note)
