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


@dataclass
class Trajectory:
    """Header (method, its config, run seed, layout digest, free-form info) and records."""

    method: str
    config: dict
    run_seed: int
    layout: str
    info: dict = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)

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
        lines = path.read_text().splitlines()
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
        return cls(head["method"], head["config"], head["run_seed"], head["layout"], head.get("info", {}), recs)


def replay(method, blocks: Sequence[Block], records: Sequence[StepRecord], state=None,
           progress: bool = False, on_step=None):
    """Apply ``records`` in order to ``blocks`` (in place); returns the method state.

    Uses the same engine as training (directions on :func:`~zoplatform.params.get_threads`
    threads), so replay costs about one direction pass per step.  ``progress`` shows a bar;
    ``on_step(i, state)`` runs before record ``i`` is applied (e.g. to copy the best step)."""
    from tqdm.auto import tqdm

    state = method.init(blocks) if state is None else state
    for i, r in enumerate(tqdm(records, desc="replay", unit="step", disable=not progress, dynamic_ncols=True)):
        if on_step is not None:
            on_step(i, state)
        state = method.replay(state, blocks, r)
    return state
