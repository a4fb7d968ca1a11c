"""The results store: an eval's output directory.

- ``OUT/results.jsonl``: one validated :class:`Record` per line, appended and flushed
  at once; never rewritten, except that a torn last line (the writer was killed
  mid-line) is cut off so appends start on a fresh line;
- ``OUT/manifest.json``: what the directory is for (task, model specs, grid, n, seed,
  RLM options); a different configuration raises :class:`ResultDirConflict`, except
  that ``extend`` may add values to the grid axes (:data:`EXTENSIBLE`);
- ``OUT/trajectories/<config>/<item>.jsonl``: each run's log, written under
  ``trajectories/.partial/`` while it runs and moved into place when it ends;
- ``OUT/.lock``: held by the one process writing the directory.

Example::

    from loopagent.evals.store import latest_records, load_records

    records = latest_records(load_records("evals/out/sniah"))
    sum(r.score for r in records) / len(records)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopagent.errors import ConfigError, LoopagentError
from loopagent.evals.grid import Kind
from loopagent.usage import UsageTotals

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
TRAJECTORIES = "trajectories"
_PARTIAL = ".partial"
_LOCK = ".lock"
MANIFEST_VERSION = 1
RECORD_VERSION = 1
#: Grid axes that ``extend=True`` may add values to.
EXTENSIBLE = ("root_loops", "child_loops", "depths", "lengths", "baselines")
#: Longer predictions are cut to this many characters in a record.
PREDICTION_LIMIT = 20_000


class ResultDirConflict(ConfigError):
    """The output directory holds results of a different configuration."""


class ResultsCorrupt(LoopagentError, ValueError):
    """``results.jsonl`` has an invalid line that is not a torn last line."""


class ResultsNotFound(LoopagentError, FileNotFoundError):
    """A directory that holds no eval results (no results file, no manifest)."""


class Record(BaseModel):
    """One line of ``results.jsonl``: one configuration on one item."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = RECORD_VERSION
    config: str = Field(description="RunConfig.key")
    kind: Kind
    root_loops: int | None
    child_loops: int | None
    depth: int | None
    length: int = Field(description="Requested length (grid value), characters.")
    item_id: str
    task: str
    length_chars: int = Field(description="Actual size of the item's context.")
    prediction: str | None
    prediction_truncated: bool = False
    gold: Any = None
    score: float = Field(ge=0.0, le=1.0)
    finished: bool
    reason: str
    iterations: int
    usage: UsageTotals
    usage_by_depth: dict[int, UsageTotals] = Field(default_factory=dict)
    wall_s: float = Field(description="The item's time in the runner, start to record.")
    model_time_s: float = Field(description="Sum of model-call wall times (concurrent child calls overlap).")
    setup_s: float = Field(default=0.0, description="Sandbox start and context load.")
    run_s: float = Field(default=0.0, description="The controller's run as the runner timed it (model calls, REPL, "
                         "trajectory log), sandbox start excluded.")
    trajectory: str | None = Field(default=None, description="Path relative to the output directory.")
    error: str | None = Field(default=None, description="Set when the run crashed; score is then 0.")
    ts: float = Field(default_factory=time.time)

    @property
    def job(self) -> tuple[str, int, str]:
        return (self.config, self.length, self.item_id)

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.model_time_s


# -- reading -------------------------------------------------------------------------------------
def load_records(out: str | os.PathLike[str], *, repair: bool = False) -> list[Record]:
    """Validated records of ``OUT/results.jsonl`` (empty if none). A torn last line (no
    newline: the writer was killed mid-line) is ignored, and with ``repair`` cut off the
    file so appends start on a fresh line; any other invalid line raises ResultsCorrupt."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(cut)
        data = data[:cut]
    records = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(Record.model_validate_json(line))
        except ValidationError as e:
            first = str(e).splitlines()[0]
            raise ResultsCorrupt(
                f"{path}:{number}: not a valid result record ({first}); fix or remove that line") from None
    return records


def latest_records(records: Iterable[Record]) -> list[Record]:
    """One record per job (the last one written wins: a retried error replaces its record)."""
    by_job: dict[tuple[str, int, str], Record] = {}
    for r in records:
        by_job.pop(r.job, None)
        by_job[r.job] = r
    return list(by_job.values())


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``OUT/manifest.json`` as written, or None when there is none."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultDirConflict(f"{path} is not valid JSON ({e.msg}); is this a loopagent eval directory?") from None


def check_manifest(out: Path, config: dict[str, Any], *, extend: bool) -> dict[str, Any]:
    """The manifest's config after this run; raises ResultDirConflict on a mismatch."""
    existing = read_manifest(out)
    if existing is None:
        if (out / RESULTS).exists():
            raise ResultDirConflict(f"{out} has {RESULTS} but no {MANIFEST}; use a new --out directory")
        return config
    old = existing.get("config")
    if existing.get("version") != MANIFEST_VERSION or not isinstance(old, dict):
        raise ResultDirConflict(
            f"{out / MANIFEST} is not a manifest this version understands; use a new --out directory")
    diffs = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
    if not diffs:
        return config
    fixed = [k for k in diffs if k not in EXTENSIBLE]
    shrunk = [k for k in diffs if k in EXTENSIBLE
              and not set(map(_hashable, old.get(k) or [])) <= set(map(_hashable, config.get(k) or []))]
    detail = "; ".join(f"{k}: existing {old.get(k)!r}, requested {config.get(k)!r}" for k in diffs)
    if not extend:
        hint = " (or pass extend=True / --extend to add grid values)" if not fixed and not shrunk else ""
        raise ResultDirConflict(
            f"{out} holds results of a different configuration ({detail}); use a new output directory{hint}"
        )
    if fixed or shrunk:
        why = (f"{', '.join(fixed)} must stay the same" if fixed else "") + \
              ("; " if fixed and shrunk else "") + (f"{', '.join(shrunk)} may only gain values" if shrunk else "")
        raise ResultDirConflict(f"{out}: cannot extend ({why}): {detail}")
    return config


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- the directory while a sweep writes it ---------------------------------------------------------
class ResultsDir:
    """An output directory held by one sweep: locked on entry (released by the OS if the
    process dies), manifest checked and written by :meth:`open`, partial logs of killed
    runs swept away.

    Example::

        with ResultsDir(out) as store:
            existing = store.open(manifest_config, [c.key for c in configs], extend=False)
            ...
            store.keep_trajectory(log_dir, config.key, item.id)   # 'trajectories/<config>/<item>.jsonl'
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.results = self.out / RESULTS
        self.partial = self.out / TRAJECTORIES / _PARTIAL
        self._lock: Any = None

    def __enter__(self) -> ResultsDir:
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / _LOCK, "a+")  # noqa: SIM115 - closed in __exit__
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "?"
            self._lock.close()
            raise ResultDirConflict(
                f"another eval (pid {holder}) is writing to {self.out}; wait for it or stop it") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()

    def open(self, config: dict[str, Any], configs: list[str], *, extend: bool) -> list[Record]:
        """Check ``config`` against the manifest (see :func:`check_manifest`), write the
        manifest, clear partial logs and return the records already there (a torn last
        line repaired)."""
        config = check_manifest(self.out, config, extend=extend)
        old = read_manifest(self.out)
        now = time.time()
        _write_json(self.out / MANIFEST, {
            "version": MANIFEST_VERSION, "config": config,
            "created": (old or {}).get("created", now), "updated": now, "configs": configs,
        })
        shutil.rmtree(self.partial, ignore_errors=True)  # leftovers of killed runs (we hold the lock)
        self.partial.mkdir(parents=True, exist_ok=True)
        return load_records(self.out, repair=True)

    def scratch(self) -> Path:
        """A fresh folder under the partial logs for one run's trajectory."""
        return self.partial / uuid.uuid4().hex

    def keep_trajectory(self, log_dir: Path, config: str, item_id: str) -> str | None:
        """Move a run's one trajectory file from ``log_dir`` to its place (replacing a killed
        run's); its path relative to the directory, or None when there was none."""
        final = self.out / TRAJECTORIES / config / f"{_safe_name(item_id)}.jsonl"
        try:
            logs = sorted(log_dir.glob("*.jsonl"))
            if not logs:
                return None
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(logs[-1], final)
        except OSError:
            return None
        return str(final.relative_to(self.out))

    def write_summary(self, data: Any) -> None:
        _write_json(self.out / SUMMARY, data)

    def close_partial(self) -> None:
        """Remove the (now empty) folder of partial logs."""
        try:
            self.partial.rmdir()
        except OSError:
            pass


def _safe_name(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("._") or "item"
    if safe != text:
        safe = f"{safe[:120]}-{uuid.uuid5(uuid.NAMESPACE_URL, text).hex[:8]}"
    return safe


__all__ = [
    "EXTENSIBLE", "MANIFEST", "MANIFEST_VERSION", "PREDICTION_LIMIT", "RECORD_VERSION", "RESULTS", "SUMMARY",
    "TRAJECTORIES", "Record", "ResultDirConflict", "ResultsCorrupt", "ResultsDir", "ResultsNotFound", "check_manifest",
    "latest_records", "load_records", "read_manifest",
]
