"""Task registry: real-data loading, MeZO templates, label words, seeded splits, errors."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, ON_FIXTURE, needs_data, real_data
from zoplatform.data import HUB, TASKS, Task, get_task, load_split, loading, resolve_data_dir, sample_splits
from zoplatform.data.tasks import holdout_rows
from zoplatform.errors import ConfigError, DataError, ZOError


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The task files (tests/conftest.py): the real ones when found, else the in-repo fixture.  A test checking
    exact numbers is ``@real_data``: it reads them from the table of its layout (``ON_FIXTURE``: the real
    files' numbers, or the fixture's, each got without the loader as its comment says); the prompt tests on a
    file's first row are ``@needs_data`` (the fixture keeps every file's first row, the same in both)."""
    return DATA


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
    assert set(TASKS) == {"sst2", "rte", "cb", "boolq", "wic", "wsc", "copa", "multirc", "sst5", "trec",
                          "mr", "cr", "subj", "mpqa"}
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
    with pytest.raises(ZOError, match=r"unknown task 'foo'; choose one of: boolq, cb, copa, cr, mpqa, mr, multirc, rte, sst2"):
        get_task("foo")


# --- real data: sizes, labels, uids ----------------------------------------------------
# Each table has a real-data version and a fixture version, picked by ON_FIXTURE.  Fixture values were counted
# on the raw files of zoplatform/data/fixtures without zoplatform: rows = `wc -l` (sst2: less its header line;
# the same as SOURCES.md's "rows kept"), MultiRC answers = python `json` sum of len(q["answers"]) over every
# passage's questions, labels = collections.Counter of the raw "label" field (sst2 / trec: the line's label
# column), mapped to words by the task's documented label order.

# rows per split after MultiRC expands to answers; label counts in candidate order
REAL_SIZES = {
    "sst2": (67349, 872), "rte": (2490, 277), "cb": (250, 56), "boolq": (None, 3270), "wic": (5428, 638),
    "wsc": (554, 104), "copa": (400, 100), "multirc": (27243, 4848), "sst5": (8544, 2210), "trec": (5452, 500),
}
FIXTURE_SIZES = {
    "sst2": (1200, 500), "rte": (160, 80), "cb": (120, 40), "boolq": (None, 120), "wic": (100, 50),
    "wsc": (80, 30), "copa": (200, 60), "multirc": (311, 224), "sst5": (200, 100), "trec": (300, 100),
}
REAL_TRAIN_LABELS = {
    "sst2": {" terrible": 29780, " great": 37569},
    "rte": {"Yes": 1249, "No": 1241},
    "cb": {"No": 119, "Yes": 115, "Maybe": 16},
    "wic": {"No": 2714, "Yes": 2714},
    "wsc": {"No": 295, "Yes": 259},
    "trec": {" Description": 1162, " Entity": 1250, " Expression": 86, " Human": 1223, " Location": 835,
             " Number": 896},
}
FIXTURE_TRAIN_LABELS = {
    "sst2": {" terrible": 520, " great": 680},  # label column 0 / 1
    "rte": {"Yes": 83, "No": 77},  # entailment / not_entailment
    "cb": {"No": 55, "Yes": 52, "Maybe": 13},  # contradiction / entailment / neutral
    "wic": {"No": 49, "Yes": 51},  # false / true
    "wsc": {"No": 49, "Yes": 31},
    "trec": {" Description": 58, " Entity": 74, " Expression": 2, " Human": 67, " Location": 46,
             " Number": 53},  # file ids 0..5 = DESC ENTY ABBR HUM LOC NUM
}
SIZES = FIXTURE_SIZES if ON_FIXTURE else REAL_SIZES
TRAIN_LABELS = FIXTURE_TRAIN_LABELS if ON_FIXTURE else REAL_TRAIN_LABELS


@real_data
@pytest.mark.parametrize("name", sorted(SIZES))
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


@real_data
def test_load_returns_fresh_lists(data_dir):
    a = load_split("rte", "validation", data_dir)
    a.clear()
    assert len(load_split("rte", "validation", data_dir)) == SIZES["rte"][1]


# --- exact prompts (MeZO's OPT templates) ---------------------------------------------

@needs_data  # the fixture keeps each file's first row
def test_sst2_prompt(data_dir):
    e = load_split("sst2", "validation", data_dir)[0]
    assert e.prompt == "it 's a charming and often affecting journey . It was"  # GLUE's trailing space stripped
    assert e.candidates == (" terrible", " great") and e.label == 1
    assert e.text == "it 's a charming and often affecting journey ." and e.uid == "sst2:validation:0"


@needs_data  # the fixture keeps each file's first row
def test_rte_prompt(data_dir):
    e = load_split("rte", "validation", data_dir)[0]
    assert e.prompt == (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
        "the Christopher Reeve Foundation.\nDoes this mean that \"Christopher Reeve had an accident.\" is true? "
        "Yes or No?\n"
    )
    assert e.candidates == ("Yes", "No") and e.label == 1  # not_entailment -> No
    assert e.text_pair == "Christopher Reeve had an accident."


@real_data
def test_cb_prompt(data_dir):
    ex = load_split("cb", "validation", data_dir)
    assert ex[0].prompt == (
        "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own "
        "portion of titanic anatomy to shaft? Did he think he was helping? Can we infer that \"Valence was "
        "helping\"? Yes, No, or Maybe?\n"
    )
    assert ex[0].candidates == ("Yes", "No", "Maybe")
    # row 1: neutral -> Maybe in the real file; contradiction -> No in the fixture (its line 2, read by eye)
    assert (ex[0].label, ex[1].label) == (1, 1 if ON_FIXTURE else 2)  # row 0 (both): contradiction -> No


@real_data
def test_copa_prompts(data_dir):
    ex = load_split("copa", "validation", data_dir)
    assert ex[0].prompt == "The man turned on the faucet so "
    assert ex[0].candidates == ("the toilet filled with water.", "water flowed from the spout.")
    assert ex[0].label == 1
    # row 2: the fixture's line 3 is the hamburger row (label 1), read by eye
    assert ex[2].candidates[ex[2].label] == ("the cook grilled it." if ON_FIXTURE else "she received her pension.")
    # "I" keeps its capital; cause questions use " because "
    i_row = next(e for e in ex if e.prompt.startswith("I wanted to conserve energy"))
    assert i_row.prompt == "I wanted to conserve energy so "
    assert i_row.candidates == (
        "I swept the floor in the unoccupied room.", "I shut off the light in the unoccupied room.")
    cause = next(e for e in ex if e.prompt.startswith("The hamburger meat browned"))
    assert cause.prompt == "The hamburger meat browned because "
    assert cause.candidates == ("the cook froze it.", "the cook grilled it.")


@needs_data  # the fixture keeps each file's first row
def test_boolq_prompt(data_dir):
    raw = json.loads((data_dir / "boolq/val.jsonl").open().readline())
    e = load_split("boolq", "validation", data_dir)[0]
    assert e.prompt == raw["passage"] + " Does ethanol take more energy make that produces?\n"
    assert e.prompt.startswith("Ethanol fuel -- All biomass goes through")
    assert e.candidates == ("Yes", "No") and e.label == 1  # false -> No
    assert (e.text, e.text_pair) == (raw["passage"], "does ethanol take more energy make that produces")


@needs_data  # the fixture keeps each file's first row
def test_wic_prompt(data_dir):
    e = load_split("wic", "validation", data_dir)[0]
    assert e.prompt == (
        "Does the word \"class\" have the same meaning in these two sentences? Yes, No?\n"
        "An emerging professional class.\n"
        "Apologizing for losing your temper, even though you were badly provoked, showed real class.\n"
    )
    assert e.candidates == ("No", "Yes") and e.label == 0


@real_data
def test_wsc_prompts(data_dir):
    ex = load_split("wsc", "validation", data_dir)
    if ON_FIXTURE:  # the fixture's lines 2, 3 and 10 (wsc/val.jsonl), read by eye
        assert ex[2].prompt == (
            "The large ball crashed right through the table because it was made of styrofoam.\nIn the previous "
            "sentence, does the pronoun \"it\" refer to The table? Yes or No?\n"
        )
        assert ex[2].candidates == ("No", "Yes") and ex[2].label == 1 and ex[1].label == 0
        assert ex[9].prompt.startswith("The path to the lake was blocked, so we couldn't use it .\n")
        assert ex[9].prompt.endswith("does the pronoun \"it\" refer to The lake? Yes or No?\n")
        return
    assert ex[2].prompt == (
        "I tried to paint a picture of an orchard, with lemons in the lemon trees , but they came out looking "
        "more like light bulbs.\nIn the previous sentence, does the pronoun \"they\" refer to lemon trees? "
        "Yes or No?\n"
    )
    assert ex[2].candidates == ("No", "Yes") and ex[2].label == 0 and ex[1].label == 1
    assert ex[9].prompt.endswith("does the pronoun \"he\" refer to The customer? Yes or No?\n")  # span2 lower-cased


@needs_data  # the fixture keeps each file's first row
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


@real_data
def test_sst5_and_trec_prompts(data_dir, tmp_data):
    e = load_split("sst5", "validation", data_dir)[0]
    assert e.prompt == "no movement , no yuks , not much of anything . It was"
    assert e.candidates == (" terrible", " bad", " okay", " good", " great") and e.label == 1
    t = load_split("trec", "validation", data_dir)
    assert t[0].prompt == "How far is it from Denver to Aspen ? The answer is about"
    assert t[0].candidates[t[0].label] == " Number"
    # row 2: "Who was Galileo ?" in the real file; "4 What river in the US is known as the Big Muddy ?" in the fixture
    assert t[2].candidates[t[2].label] == (" Location" if ON_FIXTURE else " Human")
    # the real train file's one latin-1 byte (0xF0) decodes, not crashes; the fixture's sample lacks that row
    # (grep -c $'\xf0' gives 0), so the row is written to a tmp copy of the task's files there
    root = data_dir
    if ON_FIXTURE:
        root = tmp_data
        _write(root, "trec/TREC.train.all", b"4 Which city has the oldest relationship as a sister\xf0city with "
                                             b"Los Angeles ?\n0 What is an atom ?\n")
    train = load_split("trec", "train", root)
    assert any("sister\u00f0city" in e.text for e in train)


# --- sampling (MeZO §1.3) ------------------------------------------------------------

def _uids(xs):
    return [e.uid for e in xs]


# sampling sizes: MeZO's defaults on the real files; on the fixture's 1200 sst2 / 160 rte / 120 cb / 200 copa
# train rows and 120 boolq validation rows, sizes that fit them
SST2_SAMPLE = {"num_train": 600, "num_dev": 200} if ON_FIXTURE else {}
# pinned: numpy's RandomState(0).permutation stream, identical in every process and numpy version;
# python -c "import numpy; print(numpy.random.RandomState(0).permutation(N)[0])" gives 43787 for the real
# 67349 train rows, 198 for the fixture's 1200
SST2_FIRST = "sst2:train:198" if ON_FIXTURE else "sst2:train:43787"


@real_data
def test_sampling_deterministic_and_disjoint(data_dir):
    a = sample_splits("sst2", data_dir, seed=0, **SST2_SAMPLE)
    b = sample_splits("sst2", data_dir, seed=0, **SST2_SAMPLE)
    c = sample_splits("sst2", data_dir, seed=1, **SST2_SAMPLE)
    n_dev = SIZES["sst2"][1]  # test: all of validation (872 or 500, < num_test 1000)
    assert (len(a.train), len(a.dev), len(a.test)) == ((600, 200) if ON_FIXTURE else (1000, 500)) + (n_dev,)
    assert _uids(a.train) == _uids(b.train) and _uids(a.dev) == _uids(b.dev) and _uids(a.test) == _uids(b.test)
    assert _uids(a.train) != _uids(c.train)
    assert not set(_uids(a.train)) & set(_uids(a.dev))
    assert all(u.startswith("sst2:train:") for u in _uids(a.train + a.dev))
    assert all(u.startswith("sst2:validation:") for u in _uids(a.test))
    assert f"all {n_dev}" in a.note
    assert a.train[0].uid == SST2_FIRST


@real_data
def test_dev_is_the_tail_of_one_sample(data_dir):
    # train+dev is one seeded prefix; dev is its last num_dev rows (MeZO: train_samples[-num_dev:])
    (ta, da), (tb, db) = ((100, 50), (140, 10)) if ON_FIXTURE else ((1000, 500), (1400, 100))
    a = sample_splits("rte", data_dir, num_train=ta, num_dev=da, seed=3)
    b = sample_splits("rte", data_dir, num_train=tb, num_dev=db, seed=3)
    assert _uids(a.train + a.dev) == _uids(b.train + b.dev) and len(a.dev) == da and len(b.dev) == db
    n = SIZES["rte"][1]
    assert len(a.test) == n and len(set(_uids(a.test))) == n


@real_data
def test_small_train_sets_raise(data_dir):
    cb_train, cb_val = SIZES["cb"]
    with pytest.raises(DataError, match=rf"cb: num_train \+ num_dev = 1000 \+ 500 = 1500 exceeds the {cb_train} "):
        sample_splits("cb", data_dir)
    # MeZO's dev=100 on the real files (train = the rest); on the fixture the same shape, scaled down
    (cb_t, cb_d), (copa_t, copa_d) = ((70, 50), (150, 50)) if ON_FIXTURE else ((150, 100), (300, 100))
    assert cb_t + cb_d == cb_train and copa_t + copa_d == SIZES["copa"][0]  # every train row used
    s = sample_splits("cb", data_dir, num_train=cb_t, num_dev=cb_d)
    assert (len(s.train), len(s.dev), len(s.test)) == (cb_t, cb_d, cb_val)
    s = sample_splits("copa", data_dir, num_train=copa_t, num_dev=copa_d)
    assert (len(s.train), len(s.dev), len(s.test)) == (copa_t, copa_d, SIZES["copa"][1])
    with pytest.raises(DataError, match=rf"exceeds the {cb_train} examples"):
        sample_splits("cb", data_dir, num_train=cb_t, num_dev=cb_d + 1)
    with pytest.raises(ConfigError, match="num_dev must be a non-negative integer"):
        sample_splits("cb", data_dir, num_dev=-1)


@real_data
def test_boolq_carved_from_validation(data_dir):
    sizes = {"num_train": 50, "num_dev": 20, "num_test": 40} if ON_FIXTURE else {}  # MeZO's 1000/500/1000 (real)
    s = sample_splits("boolq", data_dir, **sizes)
    tr, dv, te = set(_uids(s.train)), set(_uids(s.dev)), set(_uids(s.test))
    assert (len(tr), len(dv), len(te)) == ((50, 20, 40) if ON_FIXTURE else (1000, 500, 1000))
    assert not (tr & dv or tr & te or dv & te)
    assert all(u.startswith("boolq:validation:") for u in tr | dv | te)
    assert "boolq/train.jsonl is not available" in s.note and "disjoint" in s.note
    assert _uids(sample_splits("boolq", data_dir, **sizes).train) == _uids(s.train)
    n = SIZES["boolq"][1]
    with pytest.raises(DataError, match=f"{n} validation examples, but num_train \\+ num_dev \\+ num_test = {n + 1}"):
        sample_splits("boolq", data_dir, num_train=n - 2, num_dev=2, num_test=1)
    assert len(sample_splits("boolq", data_dir, num_train=n - 3, num_dev=2, num_test=1).train) == n - 3  # all fit


# --- single-pool tasks: MR, CR, SUBJ, MPQA (one file, a fixed held-out test pool) ----------

# file, rows, held-out rows, label counts of the file (SOURCES.md), of the test pool (stratified:
# held * n_c / n, rounded), first row of the test pool (pinned: a change re-draws every test set)
REAL_POOLS = {
    "mr": ("mr/rt-polarity.all", 10662, 2000, {" terrible": 5331, " great": 5331},
           {" terrible": 1000, " great": 1000}, 8266),
    "cr": ("cr/custrev.all", 3775, 1000, {" terrible": 1368, " great": 2407},
           {" terrible": 362, " great": 638}, 931),  # 1000 * 1368 / 3775 = 362.4
    "subj": ("subj/subj.all", 10000, 2000, {" subjective": 5000, " objective": 5000},
             {" subjective": 1000, " objective": 1000}, 4700),
    "mpqa": ("mpqa/mpqa.all", 10606, 2000, {" terrible": 7294, " great": 3312},
             {" terrible": 1375, " great": 625}, 189),  # 2000 * 7294 / 10606 = 1375.4
}
# On the fixture layout: MR, CR and SUBJ are not in the fixture (a 1,000-2,000-row held-out pool would need most
# of each file), so pool_dir writes a file per task into tmp (_pool_file: the real file's first line, the lines
# the prompt / decoding tests look for, and numbered filler lines; label counts set by construction) and
# copies the fixture's MPQA (2300 rows; `cut -d' ' -f1 mpqa/mpqa.all | sort | uniq -c`: 1591 zeros, 709 ones).
# Each train pool is 300 rows.  The first test row is not pinned there (None).
FIXTURE_POOLS = {
    "mr": ("mr/rt-polarity.all", 2300, 2000, {" terrible": 1150, " great": 1150},
           {" terrible": 1000, " great": 1000}, None),
    "cr": ("cr/custrev.all", 1300, 1000, {" terrible": 520, " great": 780},
           {" terrible": 400, " great": 600}, None),  # 1000 * 520 / 1300 = 400 exactly
    "subj": ("subj/subj.all", 2300, 2000, {" subjective": 1150, " objective": 1150},
             {" subjective": 1000, " objective": 1000}, None),
    "mpqa": ("mpqa/mpqa.all", 2300, 2000, {" terrible": 1591, " great": 709},
             {" terrible": 1383, " great": 617}, None),  # 2000 * 1591 / 2300 = 1383.48, 2000 * 709 / 2300 = 616.52
}
POOLS = FIXTURE_POOLS if ON_FIXTURE else REAL_POOLS
# sampling sizes for the pools: MeZO's defaults on the real files; 200 + 50 of the fixture layout's 300-row pools
POOL_SAMPLE = (200, 50) if ON_FIXTURE else (1000, 500)
# zo finetune's default sizes (1000, dev None): they fit the real pools; on a 300-row pool split_sizes keeps
# dev at 100 and trains on the other 200 (its rule: dev 100 when more than 200 rows are available)
POOL_DEFAULT_SIZES = (200, 100) if ON_FIXTURE else (1000, 500)
# the rows the prompt test reads: each file's last row (SUBJ: a plot summary; CR: the line "1 ")
LAST_ROW = {"subj": 2299, "cr": 1299} if ON_FIXTURE else {"subj": 9999, "cr": 3774}
# real lines (bytes as in ../shared/data) that _pool_file writes into the fixture layout's MR / CR / SUBJ
_MR_LINES = [b"0 simplistic , silly and tedious . ",
             (b"0 \x85the maudlin way its story unfolds suggests a director fighting against the urge to "
              b"sensationalize his material . "),
             b"0 the action clich\xe9s just pile up . "]
_SUBJ_FIRST = b"0 smart and alert , thirteen conversations about one thing is a small gem . "
_SUBJ_LINES = [_SUBJ_FIRST,
               (b"0 starts slowly , but adrien brody \x96 in the title role \x96 helps make the film's conclusion "
                b"powerful and satisfying . ")]
_SUBJ_LAST = (b"1 looking for a short cut to fame , glass concocted sources , quotes and even entire stories , but his "
              b"deception did not go unnoticed forever , and eventually , his world came crumbling down . . . ")
_CR_FIRST = (b"0 weaknesses are minor : the feel and layout of the remote control are only so-so ; . it does n 't show "
             b"the complete file names of mp3s with really long names ; . you must cycle through every zoom setting ( "
             b"2x , 3x , 4x , 1/2x , etc . ) before getting back to normal size [ sorry if i 'm just ignorant of a way "
             b"to get back to 1x quickly ] .")


def _pool_file(name: str, head: list[bytes], tail: list[bytes], rows: int, zeros: int) -> bytes:
    """``head`` lines, numbered filler lines ("0 ..." until the file has ``zeros`` zeros, then "1 ..."), ``tail``
    lines: ``rows`` lines in all, each text distinct."""
    fixed = head + tail
    fill0 = zeros - sum(line.startswith(b"0 ") for line in fixed)
    fill = [b"%d synthetic %s row %d ." % (int(i >= fill0), name.encode(), i) for i in range(rows - len(fixed))]
    return b"\n".join(head + fill + tail) + b"\n"


@pytest.fixture(scope="module")
def pool_dir(data_dir, tmp_path_factory) -> Path:
    """The single-pool tasks' files: the real ones, or (fixture layout) MPQA's fixture file plus MR, CR, SUBJ
    files written here as FIXTURE_POOLS says."""
    if not ON_FIXTURE:
        return data_dir
    root = tmp_path_factory.mktemp("pools")
    _write(root, "mpqa/mpqa.all", (data_dir / "mpqa/mpqa.all").read_bytes())
    _write(root, "mr/rt-polarity.all", _pool_file("mr", _MR_LINES, [], 2300, 1150))
    _write(root, "cr/custrev.all", _pool_file("cr", [_CR_FIRST], [b"1 "], 1300, 520))
    _write(root, "subj/subj.all", _pool_file("subj", _SUBJ_LINES, [_SUBJ_LAST], 2300, 1150))
    return root


def _file_rows(xs, name, pool):
    prefix = f"{name}:{pool}:"
    assert all(e.uid.startswith(prefix) for e in xs)
    return [int(e.uid.removeprefix(prefix)) for e in xs]


def _words(xs):
    return Counter(e.candidates[e.label] for e in xs)


@real_data
@pytest.mark.parametrize("name", sorted(POOLS))
def test_single_pool_split(pool_dir, name):
    data_dir = pool_dir
    rel, rows, held, labels, test_labels, _ = POOLS[name]
    task = TASKS[name]
    assert task.files == {"train": rel, "validation": rel} and task.holdout == held
    train, test = load_split(name, "train", data_dir), load_split(name, "validation", data_dir)
    assert (len(train), len(test)) == (rows - held, held)
    tr, te = _file_rows(train, name, "train"), _file_rows(test, name, "test")
    assert sorted(tr + te) == list(range(rows)) and tr == sorted(tr)  # each file row once; train in file order
    assert _words(train + test) == labels and _words(test) == test_labels
    assert not {e.text for e in train} & {e.text for e in test}  # MPQA repeats phrases: all copies on one side
    # the uid's row is the file row: text and label match the raw line
    raw = (data_dir / rel).read_bytes().decode(task.encoding).split("\n")
    for row, e in zip(tr + te, train + test):
        label, _, text = raw[row].partition(" ")
        assert (e.text, e.label, e.text_pair) == (text.strip(), int(label), None)
        assert e.candidates == tuple(labels)


@real_data
@pytest.mark.parametrize("name", sorted(POOLS))
def test_single_pool_sampling(pool_dir, name):
    from pipelines.finetune import split_sizes

    data_dir = pool_dir
    n_train, n_dev = POOL_SAMPLE
    assert split_sizes(name, data_dir, 1000, None) == POOL_DEFAULT_SIZES  # zo finetune's defaults
    a = sample_splits(name, data_dir, num_train=n_train, num_dev=n_dev, seed=0)
    b = sample_splits(name, data_dir, num_train=n_train, num_dev=n_dev, seed=1)
    pool, test_pool = load_split(name, "train", data_dir), load_split(name, "validation", data_dir)
    assert len(pool) == POOLS[name][1] - POOLS[name][2]
    assert (len(a.train), len(a.dev), len(a.test)) == (n_train, n_dev, 1000) and a.note == ""
    # test: the first 1000 of the fixed test pool, whatever the seed
    assert _uids(a.test) == _uids(b.test) == _uids(test_pool)[:1000]
    if POOLS[name][5] is not None:
        assert _file_rows(test_pool, name, "test")[0] == POOLS[name][5]
    # train/dev: MeZO's seeded permutation of the train pool, as for every task
    for seed, s in ((0, a), (1, b)):
        perm = np.random.RandomState(seed).permutation(len(pool))
        assert _uids(s.train + s.dev) == [pool[i].uid for i in perm[:n_train + n_dev]]
        assert not set(_uids(s.train + s.dev)) & set(_uids(test_pool))
    assert _uids(a.train) != _uids(b.train)
    c = sample_splits(name, data_dir, num_train=n_train, num_dev=n_dev, num_test=5000)
    assert _uids(c.test) == _uids(test_pool) and f"all {POOLS[name][2]} held-out test examples" in c.note
    msg = f"exceeds the {len(pool)} examples of its train pool ({POOLS[name][0]} less its {POOLS[name][2]} held-out"
    with pytest.raises(DataError, match=re.escape(msg)):
        sample_splits(name, data_dir, num_train=len(pool), num_dev=1)


@real_data
def test_single_pool_prompts(pool_dir):
    data_dir = pool_dir

    def by_row(name):
        ex = load_split(name, "train", data_dir) + load_split(name, "validation", data_dir)
        return {int(e.uid.rsplit(":", 1)[1]): e for e in ex}

    mr = by_row("mr")[0]
    assert (mr.prompt, mr.candidates, mr.label) == ("simplistic , silly and tedious . It was", (" terrible", " great"), 0)
    assert mr.text == "simplistic , silly and tedious ."
    subj = by_row("subj")
    assert subj[0].prompt == "smart and alert , thirteen conversations about one thing is a small gem . This is"
    assert subj[0].candidates == (" subjective", " objective") and subj[0].label == 0  # a review's opinion
    assert subj[LAST_ROW["subj"]].prompt.startswith("looking for a short cut to fame , glass concocted sources")
    assert subj[LAST_ROW["subj"]].label == 1 and len(subj) == LAST_ROW["subj"] + 1  # a plot summary: objective
    cr = by_row("cr")
    assert cr[0].prompt.startswith("weaknesses are minor : the feel and layout") and cr[0].prompt.endswith(" It was")
    assert cr[0].label == 0
    last = cr[LAST_ROW["cr"]]
    assert (last.prompt, last.text, last.label) == ("It was", "", 1) and len(cr) == LAST_ROW["cr"] + 1  # line "1 "
    mpqa = by_row("mpqa")[0]
    assert (mpqa.prompt, mpqa.candidates[mpqa.label]) == ("complaining It was", " terrible")


@real_data
def test_mr_subj_decode_windows_1252(pool_dir, tmp_data):
    data_dir = pool_dir
    raw = (data_dir / "mr/rt-polarity.all").read_bytes().split(b"\n")
    ex = {int(e.uid.rsplit(":", 1)[1]): e
          for e in load_split("mr", "train", data_dir) + load_split("mr", "validation", data_dir)}
    maudlin = next(i for i, line in enumerate(raw) if line.startswith(b"0 \x85the maudlin way"))
    assert ex[maudlin].text.startswith("\u2026the maudlin way its story")  # 0x85 is "...", not latin-1's C1 NEL
    accent = next(i for i, line in enumerate(raw) if b"\xe9" in line)  # a latin-1 letter: the same in cp1252
    assert "\u00e9" in ex[accent].text and ex[accent].text == raw[accent][2:].decode("latin-1").strip()
    subj = "".join(e.text for e in load_split("subj", "train", data_dir) + load_split("subj", "validation", data_dir))
    assert "\u2013" in subj and not any("\x80" <= ch <= "\x9f" for ch in subj)  # 0x96 = en dash; no C1 controls
    # a small file: the rule needs more rows than it holds out
    _write(tmp_data, "mr/rt-polarity.all", b"1 caf\xe9 \x96 fine\n0 bad\n0 worse\n")
    with pytest.raises(DataError, match=r"mr/rt-polarity\.all: 3 rows, too few to hold out 2000 test rows"):
        load_split("mr", "train", tmp_data)
    task = Task(**{**TASKS["mr"].__dict__, "holdout": 1})
    texts = sorted(e.text for e in load_split(task, "train", tmp_data) + load_split(task, "validation", tmp_data))
    assert texts == ["bad", "caf\u00e9 \u2013 fine", "worse"]


def test_holdout_rule_depends_on_contents_only():
    texts = [f"s{i}" for i in range(40)] + ["dup"] * 5 + ["mixed"] * 2
    labels = [int(i % 4 == 0) for i in range(40)] + [0] * 5 + [0, 1]  # 36 zeros, 11 ones
    train, test = holdout_rows(texts, labels, 10, "t")
    assert len(test) == 10 and sorted(train + test) == list(range(47)) and train == sorted(train)
    assert Counter(labels[i] for i in test) == {0: 8, 1: 2}  # quotas 10 * 36/47 = 7.66 -> 8, 2.34 -> 2
    for t in ("dup", "mixed"):  # copies of a text stay together
        assert len({i in test for i, x in enumerate(texts) if x == t}) == 1
    # the same test pool (texts, labels and order) from any row order of the file
    perm = np.random.RandomState(5).permutation(47)
    _, test2 = holdout_rows([texts[i] for i in perm], [labels[i] for i in perm], 10, "t")
    assert [texts[perm[i]] for i in test2] == [texts[i] for i in test]
    assert Counter((texts[perm[i]], labels[perm[i]]) for i in test2) == Counter((texts[i], labels[i]) for i in test)
    assert set(holdout_rows(texts, labels, 10, "other salt")[1]) != set(test)
    with pytest.raises(DataError, match="cannot hold out 2 test rows from 5 rows"):
        holdout_rows(["a"] * 5, [0] * 5, 2, "t")  # one group of 5 never fits in 2


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


@pytest.mark.parametrize("task, rel, body, message", [
    ("sst2", "sst2/dev.tsv", "sentence\tlabel\ngood \t1\nbad\t0\textra\n",
     "sst2/dev.tsv row 2 (line 3): expected 2 tab-separated fields, found 3"),
    ("sst2", "sst2/dev.tsv", "sentence\tlabel\ngood \t1\nno label here\n",
     "sst2/dev.tsv row 2 (line 3): missing field 'label'"),
    ("sst2", "sst2/dev.tsv", "sentence\tlabel\ngood \t1\nbad\t2\n",
     "sst2/dev.tsv row 2 (line 3): field 'label': unknown value '2'"),
    ("sst2", "sst2/dev.tsv", "sentence\tscore\ngood \t1\n", "sst2/dev.tsv row 1 (line 2): missing field 'label'"),
    ("trec", "trec/TREC.test.all", "3 Who ?\n9 What ?\n",
     "trec/TREC.test.all row 2: field 'label': unknown value '9'"),
    ("trec", "trec/TREC.test.all", "3 Who ?\n\n5\n", "trec/TREC.test.all row 2 (line 3): missing field 'text'"),
])
def test_malformed_text_rows(tmp_data, task, rel, body, message):
    """TSV and label-first line files: a bad row is one error naming the file, row, line and field."""
    _write(tmp_data, rel, body)
    with pytest.raises(DataError, match=re.escape(message)):
        load_split(task, "validation", tmp_data)


def test_tsv_quoting_disabled(tmp_data):
    # GLUE sentences hold bare quotes and words like "null": read verbatim
    _write(tmp_data, "sst2/dev.tsv", 'sentence\tlabel\n"the film " is fine \t1\nnull\t0\n')
    ex = load_split("sst2", "validation", tmp_data)
    assert [e.prompt for e in ex] == ['"the film " is fine It was', "null It was"]
    assert [e.label for e in ex] == [1, 0]


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
