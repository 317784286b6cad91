"""A ZO run's trajectory is its checkpoint.

Each step is a :class:`~zoplatform.types.StepRecord` (seed, losses, lr) — a few
dozen bytes as a JSON line.  Replaying the records on the base weights with the
same method re-executes the same in-place arithmetic and reproduces the tuned
weights bit-exactly (CPU, fp32), so a run resumes exactly and ships as a
header plus one line per step.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .params import Block
from .types import StepRecord

FORMAT = "zoplatform.trajectory/1"


def layout_digest(blocks: Sequence[Block]) -> str:
    """Digest of the trainable layout (names, shapes, dtypes) a trajectory applies to."""
    h = hashlib.sha256()
    for b in blocks:
        mixed = "" if b.master is None else f":master={b.master.dtype}"  # fp32 digests stay as they were
        h.update(f"{b.name}:{tuple(b.param.shape)}:{b.param.dtype}:{int(b.decay)}{mixed};".encode())
    return h.hexdigest()[:16]


SAMPLED = 65536  # values per tensor in values_digest: the whole of an adapter, a strided sample of a big matrix


def values_digest(blocks: Sequence[Block]) -> str:
    """Digest of the values a trajectory starts from (the fp32 master where there is one): every
    value of a tensor up to :data:`SAMPLED` values, an evenly strided sample of a larger one (cheap
    on a 7B model, and a different seed or checkpoint changes every sampled value)."""
    import torch

    h = hashlib.sha256()
    for b in blocks:
        t = (b.param if b.master is None else b.master).detach().reshape(-1)
        if t.numel() > SAMPLED:
            t = t[:: -(-t.numel() // SAMPLED)]
        h.update(f"{b.name};".encode())
        h.update(t.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _written_for(traj: Trajectory) -> str:
    """What a trajectory was written for, in a few words (from its header)."""
    info = traj.info or {}
    parts = []
    if "tensors" in info and "values" in info:
        parts.append(f"{info['tensors']} tensors, {info['values']:,} values")
    if info.get("model"):
        parts.append(f"model {info['model']}")
    lora = info.get("lora")
    if lora:
        parts.append(f"LoRA r={lora.get('r')} alpha={lora.get('alpha')} on {lora.get('target_modules')} "
                     f"(seed {lora.get('seed')})")
    elif "lora" in info:
        parts.append("no LoRA")
    return ", ".join(parts) or "no details recorded"


def check_applies(traj: Trajectory | None, blocks: Sequence[Block], *, expect_layout: str | None = None) -> None:
    """Refuse (one-line :class:`~zoplatform.errors.ConfigError`) parameters a trajectory was not
    written for: another trainable layout (names, shapes, dtypes — e.g. a LoRA trajectory on the
    base model), or the same layout with other initial values (another seed, base checkpoint or
    LoRA init) when the trajectory records them (``info["init_sha256"]``)."""
    from .errors import ConfigError

    where = f"{traj.source}: " if traj is not None and traj.source else ""
    want = traj.layout if traj is not None else expect_layout
    if expect_layout is not None and traj is not None and expect_layout != traj.layout:
        raise ConfigError(f"{where}trajectory layout {traj.layout} differs from expect_layout={expect_layout}")
    got = layout_digest(blocks) if want is not None else None
    if want is not None and got != want:
        what = f" ({_written_for(traj)})" if traj is not None else ""
        n = sum(b.param.numel() for b in blocks)
        lora = traj is not None and (traj.info or {}).get("lora")
        hint = " wrapped with zoplatform.models.apply_lora(base, traj.info['lora'])" if lora else ""
        raise ConfigError(f"{where}the trajectory was written for trainable layout {want}{what}, these parameters "
                          f"have layout {got} ({len(blocks)} tensors, {n:,} values): nothing was applied; replay it "
                          f"on the model it was trained from (same model, protocol, precision){hint}")
    init = (traj.info or {}).get("init_sha256") if traj is not None else None
    if init is not None:
        have = values_digest(blocks)
        if have != init:
            lora = (traj.info or {}).get("lora")
            how = (f"wrap the base with zoplatform.models.apply_lora(base, traj.info['lora']) (LoRA seed "
                   f"{lora.get('seed')})" if lora else "load the model with the seed and weights the run started from")
            raise ConfigError(f"{where}these parameters have the trajectory's layout but not its initial values "
                              f"(digest {have}, the trajectory starts from {init}): nothing was applied; {how}")


@dataclass
class Trajectory:
    """Header (method, its config, run seed, layout digest, free-form info) and records."""

    method: str
    config: dict
    run_seed: int
    layout: str
    info: dict = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    source: str | None = field(default=None, compare=False, repr=False)  # the file it was loaded from

    def append(self, record: StepRecord) -> None:
        self.records.append(record)

    def save(self, path: str | Path) -> Path:
        """Write atomically (tmp file + rename): an interrupt never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            head = {"format": FORMAT, "method": self.method, "config": self.config,
                    "run_seed": self.run_seed, "layout": self.layout, "info": self.info}
            f.write(json.dumps(head) + "\n")
            for r in self.records:
                f.write(json.dumps(asdict(r)) + "\n")
        tmp.replace(path)
        return path

    def digest(self, n: int | None = None) -> str:
        """sha256 of the first ``n`` records (all by default), as written: a checkpoint's
        state stores it so that a trajectory edited or cut since is detected."""
        h = hashlib.sha256()
        for r in self.records[: len(self.records) if n is None else n]:
            h.update((json.dumps(asdict(r)) + "\n").encode())
        return h.hexdigest()

    @classmethod
    def load(cls, path: str | Path, *, on_torn=None) -> Trajectory:
        """Read a trajectory file.  A last line cut mid-record (a write interrupted by a crash
        or a full disk) is dropped and ``on_torn(message)`` is called (default: a warning);
        any other malformed line is a one-line :class:`~zoplatform.errors.DataError`."""
        from .errors import DataError

        path = Path(path)
        if not path.is_file():
            raise DataError(f"trajectory file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a zoplatform trajectory (not UTF-8 text: byte {e.start} is "
                            f"{e.object[e.start:e.start + 1]!r}); expected a {FORMAT} JSON-lines file") from None
        while lines and not lines[-1].strip():  # blank lines at the end (an editor's newline) are not torn records
            lines.pop()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            got = head.get("format") if isinstance(head, dict) else None
            raise DataError(f"{path}: not a zoplatform trajectory (format {got!r}, expected {FORMAT!r})")
        recs = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                d = json.loads(line)
                recs.append(StepRecord(d["seed"], tuple(d["losses"]), d["lr"], tuple(d.get("grad", ())),
                                       d.get("extra", {})))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if i == len(lines):
                    msg = (f"{path}: last line {i} is a torn record ({type(e).__name__}); recovered the "
                           f"{len(recs)} complete records before it")
                    if on_torn is None:
                        warnings.warn(msg, stacklevel=2)
                    else:
                        on_torn(msg)
                    break
                raise DataError(f"{path}: line {i} is not a trajectory record ({type(e).__name__}: {e})") from None
        return cls(head["method"], head["config"], head["run_seed"], head["layout"], head.get("info", {}), recs,
                   source=str(path))


def replay(method, blocks: Sequence[Block], records: Trajectory | Sequence[StepRecord], state=None,
           progress: bool = False, on_step=None, *, expect_layout: str | None = None):
    """Apply ``records`` in order to ``blocks`` (in place); returns the method state.

    ``records`` is a :class:`Trajectory` (checked first: its method, trainable layout and — where
    recorded — initial values must be those of ``method`` and ``blocks``, else a one-line
    :class:`~zoplatform.errors.ConfigError` and nothing is applied) or a sequence of records
    (checked against ``expect_layout`` when given).  Uses the same engine as training
    (directions on :func:`~zoplatform.params.get_threads` threads), so replay costs about one
    direction pass per step.  ``progress`` shows a bar;
    ``on_step(i, state)`` runs before record ``i`` is applied (e.g. to copy the best step)."""
    from tqdm.auto import tqdm

    if isinstance(records, Trajectory):
        traj = records
        if traj.method != method.name:
            from .errors import ConfigError

            raise ConfigError(f"{traj.source or 'the trajectory'} was written by method {traj.method!r}, "
                              f"not {method.name!r}: replay it with zoplatform.make(traj.method, **traj.config)")
        check_applies(traj, blocks, expect_layout=expect_layout)
        records = traj.records
    elif expect_layout is not None:
        check_applies(None, blocks, expect_layout=expect_layout)
    state = method.init(blocks) if state is None else state
    for i, r in enumerate(tqdm(records, desc="replay", unit="step", disable=not progress, dynamic_ncols=True)):
        if on_step is not None:
            on_step(i, state)
        state = method.replay(state, blocks, r)
    return state
