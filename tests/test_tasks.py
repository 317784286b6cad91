"""Task registry: real-data loading, MeZO templates, label words, seeded splits, errors."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from zoplatform.data import HUB, TASKS, Task, get_task, load_split, loading, resolve_data_dir, sample_splits
from zoplatform.errors import ConfigError, DataError, ZOError


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return resolve_data_dir(None)
    except DataError as exc:
        pytest.skip(f"real task data not found ({exc})")


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """An empty data dir; the datasets Arrow cache goes to tmp too (no growth of ~/.cache)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    root = tmp_path / "data"
    root.mkdir()
    return root


def _write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# --- registry ------------------------------------------------------------------------

def test_registry_names_and_shape():
    assert set(TASKS) == {"sst2", "rte", "cb", "boolq", "wic", "wsc", "copa", "multirc", "sst5", "trec"}
    want_labels = {"cb": 3, "sst5": 5, "trec": 6}
    for name, task in TASKS.items():
        assert task.name == name and set(task.files) == {"train", "validation"}
        assert task.num_labels == want_labels.get(name, 2)
        assert sorted(set(task.labels.values())) == list(range(task.num_labels))
        # static words, or none at all when they come from the row (COPA's choices)
        assert len(task.candidates) == task.num_labels or (not task.candidates and task.row_candidates)
    with pytest.raises(AttributeError):
        TASKS["sst2"].name = "x"  # frozen


def test_get_task():
    assert get_task("rte") is TASKS["rte"] and get_task("SST2") is TASKS["sst2"]
    assert get_task(TASKS["cb"]) is TASKS["cb"]
    with pytest.raises(ZOError, match=r"unknown task 'foo'; choose one of: boolq, cb, copa, multirc, rte, sst2"):
        get_task("foo")


# --- real data: sizes, labels, uids ----------------------------------------------------

# rows per split after MultiRC expands to answers; label counts in candidate order
SIZES = {
    "sst2": (67349, 872), "rte": (2490, 277), "cb": (250, 56), "boolq": (None, 3270), "wic": (5428, 638),
    "wsc": (554, 104), "copa": (400, 100), "multirc": (27243, 4848), "sst5": (8544, 2210), "trec": (5452, 500),
}
TRAIN_LABELS = {
    "sst2": {" terrible": 29780, " great": 37569},
    "rte": {"Yes": 1249, "No": 1241},
    "cb": {"No": 119, "Yes": 115, "Maybe": 16},
    "wic": {"No": 2714, "Yes": 2714},
    "wsc": {"No": 295, "Yes": 259},
    "trec": {" Description": 1162, " Entity": 1250, " Expression": 86, " Human": 1223, " Location": 835,
             " Number": 896},
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_both_splits(data_dir, name):
    task = TASKS[name]
    for split, size in zip(("train", "validation"), SIZES[name]):
        if size is None:  # BoolQ ships no train file
            with pytest.raises(DataError, match=r"boolq train: data file not found: .*boolq/train\.jsonl"):
                load_split(name, split, data_dir)
            continue
        ex = load_split(name, split, data_dir)
        assert len(ex) == size
        assert len({e.uid for e in ex}) == size and ex[0].uid.startswith(f"{name}:{split}:0")
        for e in ex[:50] + ex[-50:]:
            assert 0 <= e.label < len(e.candidates) == task.num_labels
            assert e.prompt and e.text and all(e.candidates)
            assert (e.text_pair is None) == (task.text_pair is None)
        if split == "train" and name in TRAIN_LABELS:
            assert Counter(e.candidates[e.label] for e in ex) == TRAIN_LABELS[name]


def test_load_returns_fresh_lists(data_dir):
    a = load_split("rte", "validation", data_dir)
    a.clear()
    assert len(load_split("rte", "validation", data_dir)) == 277


# --- exact prompts (MeZO's OPT templates) ---------------------------------------------

def test_sst2_prompt(data_dir):
    e = load_split("sst2", "validation", data_dir)[0]
    assert e.prompt == "it 's a charming and often affecting journey . It was"  # GLUE's trailing space stripped
    assert e.candidates == (" terrible", " great") and e.label == 1
    assert e.text == "it 's a charming and often affecting journey ." and e.uid == "sst2:validation:0"


def test_rte_prompt(data_dir):
    e = load_split("rte", "validation", data_dir)[0]
    assert e.prompt == (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
        "the Christopher Reeve Foundation.\nDoes this mean that \"Christopher Reeve had an accident.\" is true? "
        "Yes or No?\n"
    )
    assert e.candidates == ("Yes", "No") and e.label == 1  # not_entailment -> No
    assert e.text_pair == "Christopher Reeve had an accident."


def test_cb_prompt(data_dir):
    ex = load_split("cb", "validation", data_dir)
    assert ex[0].prompt == (
        "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own "
        "portion of titanic anatomy to shaft? Did he think he was helping? Can we infer that \"Valence was "
        "helping\"? Yes, No, or Maybe?\n"
    )
    assert ex[0].candidates == ("Yes", "No", "Maybe")
    assert (ex[0].label, ex[1].label) == (1, 2)  # contradiction -> No, neutral -> Maybe


def test_copa_prompts(data_dir):
    ex = load_split("copa", "validation", data_dir)
    assert ex[0].prompt == "The man turned on the faucet so "
    assert ex[0].candidates == ("the toilet filled with water.", "water flowed from the spout.")
    assert ex[0].label == 1
    assert ex[2].candidates[ex[2].label] == "she received her pension."
    # "I" keeps its capital; cause questions use " because "
    i_row = next(e for e in ex if e.prompt.startswith("I wanted to conserve energy"))
    assert i_row.prompt == "I wanted to conserve energy so "
    assert i_row.candidates == (
        "I swept the floor in the unoccupied room.", "I shut off the light in the unoccupied room.")
    cause = next(e for e in ex if e.prompt.startswith("The hamburger meat browned"))
    assert cause.prompt == "The hamburger meat browned because "
    assert cause.candidates == ("the cook froze it.", "the cook grilled it.")


def test_boolq_prompt(data_dir):
    raw = json.loads((data_dir / "boolq/val.jsonl").open().readline())
    e = load_split("boolq", "validation", data_dir)[0]
    assert e.prompt == raw["passage"] + " Does ethanol take more energy make that produces?\n"
    assert e.prompt.startswith("Ethanol fuel -- All biomass goes through")
    assert e.candidates == ("Yes", "No") and e.label == 1  # false -> No
    assert (e.text, e.text_pair) == (raw["passage"], "does ethanol take more energy make that produces")


def test_wic_prompt(data_dir):
    e = load_split("wic", "validation", data_dir)[0]
    assert e.prompt == (
        "Does the word \"class\" have the same meaning in these two sentences? Yes, No?\n"
        "An emerging professional class.\n"
        "Apologizing for losing your temper, even though you were badly provoked, showed real class.\n"
    )
    assert e.candidates == ("No", "Yes") and e.label == 0


def test_wsc_prompts(data_dir):
    ex = load_split("wsc", "validation", data_dir)
    assert ex[2].prompt == (
        "I tried to paint a picture of an orchard, with lemons in the lemon trees , but they came out looking "
        "more like light bulbs.\nIn the previous sentence, does the pronoun \"they\" refer to lemon trees? "
        "Yes or No?\n"
    )
    assert ex[2].candidates == ("No", "Yes") and ex[2].label == 0 and ex[1].label == 1
    assert ex[9].prompt.endswith("does the pronoun \"he\" refer to The customer? Yes or No?\n")  # span2 lower-cased


def test_multirc_one_example_per_answer(data_dir):
    ex = load_split("multirc", "validation", data_dir)
    first = [e for e in ex if e.uid.startswith("multirc:validation:0.")]
    assert [e.uid for e in first[:2]] == ["multirc:validation:0.0", "multirc:validation:0.1"]
    assert first[0].prompt.startswith("What causes a change in motion? The application of a force.")
    assert first[0].prompt.endswith(
        "\nQuestion: Would the mass of a baseball affect how much force you have to use to pick it up?\n"
        "I found this answer \"No\". Is that correct? Yes or No?\n"
    )
    assert [e.label for e in first[:4]] == [0, 1, 1, 0] and first[0].candidates == ("No", "Yes")


def test_sst5_and_trec_prompts(data_dir):
    e = load_split("sst5", "validation", data_dir)[0]
    assert e.prompt == "no movement , no yuks , not much of anything . It was"
    assert e.candidates == (" terrible", " bad", " okay", " good", " great") and e.label == 1
    t = load_split("trec", "validation", data_dir)
    assert t[0].prompt == "How far is it from Denver to Aspen ? The answer is about"
    assert t[0].candidates[t[0].label] == " Number"
    assert t[2].candidates[t[2].label] == " Human"  # "Who was Galileo ?"
    train = load_split("trec", "train", data_dir)
    assert any("\u00f0" in e.text for e in train)  # the one latin-1 byte (0xF0) decodes, not crashes


# --- sampling (MeZO §1.3) ------------------------------------------------------------

def _uids(xs):
    return [e.uid for e in xs]


def test_sampling_deterministic_and_disjoint(data_dir):
    a = sample_splits("sst2", data_dir, seed=0)
    b = sample_splits("sst2", data_dir, seed=0)
    c = sample_splits("sst2", data_dir, seed=1)
    assert (len(a.train), len(a.dev), len(a.test)) == (1000, 500, 872)  # test: all 872 (< 1000)
    assert _uids(a.train) == _uids(b.train) and _uids(a.dev) == _uids(b.dev) and _uids(a.test) == _uids(b.test)
    assert _uids(a.train) != _uids(c.train)
    assert not set(_uids(a.train)) & set(_uids(a.dev))
    assert all(u.startswith("sst2:train:") for u in _uids(a.train + a.dev))
    assert all(u.startswith("sst2:validation:") for u in _uids(a.test))
    assert "all 872" in a.note
    # pinned: numpy's RandomState(0).permutation stream, identical in every process and numpy version
    assert a.train[0].uid == "sst2:train:43787"


def test_dev_is_the_tail_of_one_sample(data_dir):
    # train+dev is one seeded prefix; dev is its last num_dev rows (MeZO: train_samples[-num_dev:])
    a = sample_splits("rte", data_dir, num_train=1000, num_dev=500, seed=3)
    b = sample_splits("rte", data_dir, num_train=1400, num_dev=100, seed=3)
    assert _uids(a.train + a.dev) == _uids(b.train + b.dev)
    assert len(a.test) == 277 and len(set(_uids(a.test))) == 277


def test_small_train_sets_raise(data_dir):
    with pytest.raises(DataError, match=r"cb: num_train \+ num_dev = 1000 \+ 500 = 1500 exceeds the 250"):
        sample_splits("cb", data_dir)
    s = sample_splits("cb", data_dir, num_train=150, num_dev=100)
    assert (len(s.train), len(s.dev), len(s.test)) == (150, 100, 56)
    s = sample_splits("copa", data_dir, num_train=300, num_dev=100)
    assert (len(s.train), len(s.dev), len(s.test)) == (300, 100, 100)
    with pytest.raises(ConfigError, match="num_dev must be a non-negative integer"):
        sample_splits("cb", data_dir, num_dev=-1)


def test_boolq_carved_from_validation(data_dir):
    s = sample_splits("boolq", data_dir)
    tr, dv, te = set(_uids(s.train)), set(_uids(s.dev)), set(_uids(s.test))
    assert (len(tr), len(dv), len(te)) == (1000, 500, 1000)
    assert not (tr & dv or tr & te or dv & te)
    assert all(u.startswith("boolq:validation:") for u in tr | dv | te)
    assert "boolq/train.jsonl is not available" in s.note and "disjoint" in s.note
    assert _uids(sample_splits("boolq", data_dir).train) == _uids(s.train)
    with pytest.raises(DataError, match="3270 validation examples"):
        sample_splits("boolq", data_dir, num_train=2000, num_dev=500, num_test=1000)


# --- malformed data --------------------------------------------------------------------

RTE_OK = {"premise": "P.", "hypothesis": "H.", "label": "entailment", "idx": 0}


@pytest.mark.parametrize("rows, message", [
    ((RTE_OK, RTE_OK, {"premise": "P.", "label": "entailment"}),
     "rte/train.jsonl row 3: missing field 'hypothesis'"),
    ((RTE_OK, '{"premise": "P.", "hypothesis": ', RTE_OK), "rte/train.jsonl row 2: invalid JSON"),
    ((RTE_OK, {**RTE_OK, "label": "maybe"}), "rte/train.jsonl row 2: field 'label': unknown value 'maybe'"),
    ((RTE_OK, "", {**RTE_OK, "premise": None}), "rte/train.jsonl row 2 (line 3): missing field 'premise'"),
    ((RTE_OK, "[1, 2]"), "rte/train.jsonl row 2: expected a JSON object"),
])
def test_malformed_jsonl(tmp_data, rows, message):
    _write(tmp_data, "rte/train.jsonl", _jsonl(*rows))
    with pytest.raises(DataError, match=re.escape(message)):
        load_split("rte", "train", tmp_data)


@pytest.mark.parametrize("task, rel, row, message", [
    ("boolq", "boolq/val.jsonl", {"passage": "P", "question": "q", "label": 1},
     "boolq/val.jsonl row 2: field 'label': unknown value 1"),  # JSON true/false only, not 1
    ("wsc", "wsc/val.jsonl", {"text": "t", "target": {"span1_text": "a"}, "label": True},
     "wsc/val.jsonl row 2: missing field 'target.span2_text'"),
    ("multirc", "multirc/val.jsonl",
     {"passage": {"text": "p", "questions": [
         {"question": "q", "answers": [{"text": "a", "label": 1}, {"text": "b"}]}]}},
     "multirc/val.jsonl row 2: missing field 'passage.questions[0].answers[1].label'"),
    ("copa", "copa/val.jsonl", {"premise": "p.", "choice1": "a", "choice2": "b", "question": "why", "label": 0},
     "copa/val.jsonl row 2: field 'question': unknown value 'why'"),
])
def test_malformed_nested_jsonl(tmp_data, task, rel, row, message):
    good = {
        "boolq": {"passage": "P", "question": "q", "label": True},
        "wsc": {"text": "t", "target": {"span1_text": "a", "span2_text": "It"}, "label": False},
        "multirc": {"passage": {"text": "p", "questions": [{"question": "q", "answers": [{"text": "a", "label": 0}]}]}},
        "copa": {"premise": "p.", "choice1": "A b.", "choice2": "I c.", "question": "cause", "label": 1},
    }[task]
    _write(tmp_data, rel, _jsonl(good))
    ok = load_split(task, "validation", tmp_data)  # the good row alone parses
    assert len(ok) == 1 and ok[0].uid == f"{task}:validation:0"
    _write(tmp_data, rel, _jsonl(good, row))
    with pytest.raises(DataError, match=re.escape(message)):
        load_split(task, "validation", tmp_data)


@pytest.mark.parametrize("body, message", [
    ("sentence\tlabel\ngood \t1\nbad\t0\textra\n",
     "sst2/dev.tsv row 2 (line 3): expected 2 tab-separated fields, found 3"),
    ("sentence\tlabel\ngood \t1\nno label here\n", "sst2/dev.tsv row 2 (line 3): missing field 'label'"),
    ("sentence\tlabel\ngood \t1\nbad\t2\n", "sst2/dev.tsv row 2 (line 3): field 'label': unknown value '2'"),
    ("sentence\tscore\ngood \t1\n", "sst2/dev.tsv row 1 (line 2): missing field 'label'"),
])
def test_malformed_tsv(tmp_data, body, message):
    _write(tmp_data, "sst2/dev.tsv", body)
    with pytest.raises(DataError, match=re.escape(message)):
        load_split("sst2", "validation", tmp_data)


def test_tsv_quoting_disabled(tmp_data):
    # GLUE sentences hold bare quotes and words like "null": read verbatim
    _write(tmp_data, "sst2/dev.tsv", 'sentence\tlabel\n"the film " is fine \t1\nnull\t0\n')
    ex = load_split("sst2", "validation", tmp_data)
    assert [e.prompt for e in ex] == ['"the film " is fine It was', "null It was"]
    assert [e.label for e in ex] == [1, 0]


@pytest.mark.parametrize("body, message", [
    ("3 Who ?\n9 What ?\n", "trec/TREC.test.all row 2: field 'label': unknown value '9'"),
    ("3 Who ?\n\n5\n", "trec/TREC.test.all row 2 (line 3): missing field 'text'"),
])
def test_malformed_label_lines(tmp_data, body, message):
    _write(tmp_data, "trec/TREC.test.all", body)
    with pytest.raises(DataError, match=re.escape(message)):
        load_split("trec", "validation", tmp_data)


def test_encoding_per_task(tmp_data):
    _write(tmp_data, "trec/TREC.test.all", b"3 Who is Andr\xe9 ?\n")  # latin-1 byte
    assert load_split("trec", "validation", tmp_data)[0].text == "Who is Andr\u00e9 ?"
    _write(tmp_data, "sst5/stsa.fine.test", b"4 fine\n2 cr\xe8me\n")  # not UTF-8
    with pytest.raises(DataError, match=r"sst5/stsa\.fine\.test line 2: not valid utf-8"):
        load_split("sst5", "validation", tmp_data)


# --- data dir resolution -------------------------------------------------------------

def test_missing_data_dir(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=re.escape(f"data dir not found: {missing} (from --data-dir)")):
        resolve_data_dir(missing)
    with pytest.raises(DataError, match="data dir not found"):
        load_split("rte", "train", missing)
    monkeypatch.setenv("ZO_DATA_DIR", str(missing))
    with pytest.raises(DataError, match=r"from ZO_DATA_DIR"):
        resolve_data_dir(None)
    monkeypatch.delenv("ZO_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(DataError, match=r"no data dir found .*pass --data-dir DIR or set ZO_DATA_DIR"):
        resolve_data_dir(None)


def test_data_dir_precedence(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    env_dir.mkdir()
    arg_dir.mkdir()
    monkeypatch.setenv("ZO_DATA_DIR", str(env_dir))
    assert resolve_data_dir(None) == env_dir.resolve()
    assert resolve_data_dir(arg_dir) == arg_dir.resolve()
    monkeypatch.delenv("ZO_DATA_DIR")
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")  # ../shared/data relative to the CWD
    assert resolve_data_dir(None) == (tmp_path / "shared" / "data").resolve()


def test_missing_file_and_bad_split(tmp_data):
    with pytest.raises(DataError, match=re.escape(f"rte train: data file not found: {tmp_data / 'rte/train.jsonl'}")):
        load_split("rte", "train", tmp_data)
    with pytest.raises(ZOError, match="unknown split 'test'; choose one of: train, validation"):
        load_split("rte", "test", tmp_data)


# --- Hugging Face Hub (opt-in with data_dir="hub"; offline here, so faked) -------------

def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'super_glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load super_glue/rte \[train\] from the Hugging Face Hub"):
        load_split("rte", "train", HUB)
    with pytest.raises(DataError, match="task 'trec' has no Hugging Face Hub id"):
        load_split("trec", "train", HUB)


def test_hub_rows_use_hub_label_ids(monkeypatch):
    import datasets

    class Fake:
        def to_list(self):
            return [{"question": "is it", "passage": "P.", "idx": 0, "label": 1},
                    {"question": "is it not", "passage": "P.", "idx": 1, "label": 0}]

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: Fake())
    task = Task(**TASKS["boolq"].__dict__)  # a fresh object: own cache entry
    ex = load_split(task, "validation", HUB)
    assert [e.candidates[e.label] for e in ex] == ["Yes", "No"]  # hub 1 = True -> Yes
    assert ex[0].prompt == "P. Is it?\n" and ex[1].uid == "boolq:validation:1"
