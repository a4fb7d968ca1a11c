"""The evaluation runner: sweep root/child loops x depth x length over a task's items.

Every (configuration, item) pair is one run, appended to ``OUT/results.jsonl`` as one
validated :class:`Record` per line and flushed at once, with its trajectory under
``OUT/trajectories/<config>/``. ``OUT/manifest.json`` records what the directory is
for (task, model specs, grid, n, seed, RLM options).

Resuming: run the same command again. Records already in ``results.jsonl`` are
skipped (never re-run, never lost); items that were in flight when the process died
have no record and run again; a torn last line (the process was killed mid-write)
is cut off and its item runs again. A *different* configuration against an existing
directory raises :class:`ResultDirConflict`, except that ``extend=True`` may add
values to the grid axes (root/child loops, depths, lengths, baselines) while
everything else (task, options, specs, n, seed, RLM options) stays the same: the
existing records keep their meaning, since each is keyed by its own configuration
and items depend only on (task, options, n, length, seed).

Example::

    from loopagent.evals.runner import run_eval

    summary = run_eval("sniah", root="litellm:openai/gpt-4o-mini", child="hf:ckpt/looped",
                       root_loops=[None], child_loops=[1, 2, 4, 8], depths=[1, 2],
                       lengths=["32k", "1m"], n=50, out="evals/out/sniah",
                       baselines=["root_only", "no_loops"])
    summary.overhead_ratio   # runner + controller + sandbox time per unit of model time

Loop axes: ``None`` means the model's default loop budget (recorded resolved); a
model that is not looped accepts only ``[None]`` (a list of loop budgets for it is
refused with :class:`~loopagent.errors.ConfigError` rather than silently collapsed).

Baselines: ``root_only`` asks the root model alone, in one call with no REPL, with
the question and the first ``baseline_chars`` characters of the context (once per
root-loops value); ``no_loops`` is the RLM with root and child loops forced to 1
(needs a looped root or child; once per depth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopagent.aio import run_sync
from loopagent.backends.base import Backend, Completion, Message
from loopagent.errors import BackendError, ConfigError, InvalidLoopsError, LoopagentError
from loopagent.evals.base import Item, Task, get_task
from loopagent.models import model as build_model
from loopagent.parsing import find_final_in_text, strip_code_blocks
from loopagent.environments import describe_context
from loopagent.trajectory import FinalAnswer, LimitHit, RootTurn, RunEnd, RunStart, TrajectoryWriter
from loopagent.usage import RunUsage, UsageTotals

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
TRAJECTORIES = "trajectories"
_PARTIAL = ".partial"
_LOCK = ".lock"
MANIFEST_VERSION = 1
RECORD_VERSION = 1
BASELINES = ("root_only", "no_loops")
#: Grid axes that ``extend=True`` may add values to.
EXTENSIBLE = ("root_loops", "child_loops", "depths", "lengths", "baselines")
PREDICTION_LIMIT = 20_000

Kind = Literal["rlm", "root_only", "no_loops"]


class ResultDirConflict(ConfigError):
    """The output directory holds results of a different configuration."""


class ResultsCorrupt(LoopagentError, ValueError):
    """``results.jsonl`` has an invalid line that is not a torn last line."""


# -- lengths and loop lists ---------------------------------------------------------------
_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_length(spec: str | int) -> int:
    """Characters from a human length: ``"32k"`` -> 32,000, ``"1m"``/``"1M"`` -> 1,000,000,
    ``"1.5m"`` -> 1,500,000, ``"8000"`` -> 8,000 (decimal multiples: k = 10^3, m = 10^6, g = 10^9)."""
    if isinstance(spec, bool):
        raise ConfigError(f"a length must be a number of characters like 32k or 1m, got {spec!r}")
    if isinstance(spec, int):
        value = spec
    else:
        match = _LENGTH.match(str(spec).replace("_", ""))
        if not match:
            raise ConfigError(f"bad length {spec!r}: use characters like 8000, 32k, 1.5m or 10M")
        value = int(round(float(match.group(1)) * _SCALE[match.group(2).lower()]))
    if value < 1:
        raise ConfigError(f"a length must be at least 1 character, got {spec!r}")
    return value


def format_length(chars: int) -> str:
    """The short form of a length: 32000 -> '32k', 1500000 -> '1.5m'."""
    for suffix, scale in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if chars >= scale and (chars * 1000) % scale == 0:
            return f"{chars / scale:g}{suffix}"
    return str(chars)


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,2"`` -> [1, 2]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers like 1,2 (got {text!r})") from None
    if not values:
        raise ConfigError(f"{what}: no values in {text!r}")
    return values


def parse_loops_list(text: str | None, what: str) -> list[int | None]:
    """``"1,4,8"`` -> [1, 4, 8]; ``""``/None/``"default"`` -> [None] (the model's default)."""
    if text is None or not text.strip():
        return [None]
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() in ("default", "none", "-"):
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise ConfigError(f"{what}: expected loop budgets like 1,2,4,8 (or 'default'), got {part!r}") from None
    return values or [None]


# -- configurations -------------------------------------------------------------------
class RunConfig(BaseModel):
    """One point of the sweep (a model setting); every item runs under it once per length."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    root_loops: int | None = None
    child_loops: int | None = None
    depth: int | None = None

    @property
    def key(self) -> str:
        """Stable, filesystem-safe name, e.g. ``rlm.rl=4.cl=2.d=1``, ``root_only.rl=4``; a
        model that is not looped has no loops part."""
        parts = [self.kind]
        if self.root_loops is not None:
            parts.append(f"rl={self.root_loops}")
        if self.child_loops is not None:
            parts.append(f"cl={self.child_loops}")
        if self.depth is not None:
            parts.append(f"d={self.depth}")
        return ".".join(parts)


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


class EvalSummary(BaseModel):
    """What :func:`run_eval` did; also written to ``OUT/summary.json``."""

    out: str
    task: str
    jobs_total: int
    jobs_skipped: int = Field(description="Already in results.jsonl before this run.")
    jobs_run: int
    errors: int = Field(description="Runs of this invocation that crashed.")
    elapsed_s: float
    items_per_s: float
    accuracy: dict[str, float] = Field(description="Mean score by configuration over all records so far.")
    # Overhead per item of this invocation (seconds, means): wall = model time + overhead.
    mean_wall_s: float
    mean_model_time_s: float
    mean_overhead_s: float = Field(description="Wall time minus time inside model calls.")
    mean_setup_s: float = Field(description="Part of the overhead: sandbox start + context load.")
    mean_controller_s: float = Field(description="Part of the overhead: controller and REPL time outside model calls.")
    mean_runner_s: float = Field(description="Part of the overhead: the runner's own (scheduling, scoring, logs, records).")
    overhead_ratio: float | None = Field(description="Sum of overhead / sum of model time.")
    runner_ratio: float | None = Field(description="Sum of the runner's own time / sum of model time.")


# -- backends with per-configuration loop defaults -------------------------------------------
class _LoopView(Backend):
    """A backend seen with another default loop budget (shares the model, copies nothing)."""

    def __init__(self, inner: Backend, loops: int | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.looped = inner.looped
        self.max_loops = inner.max_loops
        self.default_loops = inner.validate_loops(loops) if inner.looped else None

    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        if loops is None:
            loops = self.default_loops
        return await self.inner.acomplete(messages, loops=loops, max_tokens=max_tokens, **kwargs)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def check(self) -> None:
        self.inner.check()


def _for_role(backend: Backend, role: str) -> Backend:
    """The model a backend plays as root or child (a bundle like ``embedded`` holds both)."""
    for_role = getattr(backend, "for_role", None)
    return for_role(role) if callable(for_role) else backend


def _resolve_loops(backend: Backend, values: Sequence[int | None], what: str) -> list[int | None]:
    values = list(values)
    if not values:
        raise ConfigError(f"{what}: give at least one loop budget (None = the model's default)")
    if not backend.looped:
        if any(v is not None for v in values):
            raise InvalidLoopsError(
                f"{what}: {backend.name} is not a looped model, so it takes no loop budgets "
                f"(got {values}); leave the option out"
            )
        return [None]
    resolved = []
    for v in values:
        r = backend.validate_loops(v)
        if r not in resolved:
            resolved.append(r)
    return resolved


def _spec_name(spec: str | Backend | None) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    return spec.name


def _jsonable(value: Any) -> Any:
    """Options as JSON (pydantic models dumped, other objects described)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if hasattr(value, "describe") and callable(value.describe):
        return value.describe()
    return json.loads(json.dumps(value, default=repr, sort_keys=True))


# -- the output directory -------------------------------------------------------------------
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
            raise ResultsCorrupt(f"{path}:{number}: not a valid result record ({first}); fix or remove that line") from None
    return records


def latest_records(records: Iterable[Record]) -> list[Record]:
    """One record per job (the last one written wins: a retried error replaces its record)."""
    by_job: dict[tuple[str, int, str], Record] = {}
    for r in records:
        by_job.pop(r.job, None)
        by_job[r.job] = r
    return list(by_job.values())


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultDirConflict(f"{path} is not valid JSON ({e.msg}); is this a loopagent eval directory?") from None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _check_manifest(out: Path, config: dict[str, Any], *, extend: bool) -> dict[str, Any]:
    """The manifest's config after this run; raises ResultDirConflict on a mismatch."""
    existing = read_manifest(out)
    if existing is None:
        if (out / RESULTS).exists():
            raise ResultDirConflict(f"{out} has {RESULTS} but no {MANIFEST}; use a new --out directory")
        return config
    old = existing.get("config")
    if existing.get("version") != MANIFEST_VERSION or not isinstance(old, dict):
        raise ResultDirConflict(f"{out / MANIFEST} is not a manifest this version understands; use a new --out directory")
    diffs = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
    if not diffs:
        return config
    fixed = [k for k in diffs if k not in EXTENSIBLE]
    shrunk = [k for k in diffs if k in EXTENSIBLE and not set(map(_hashable, old.get(k) or [])) <= set(map(_hashable, config.get(k) or []))]
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


class _DirLock:
    """An exclusive lock on the output directory (released by the OS if the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / _LOCK
        self.file: Any = None

    def __enter__(self) -> _DirLock:
        self.file = open(self.path, "a+")  # noqa: SIM115
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise ResultDirConflict(f"another eval (pid {holder}) is writing to {self.path.parent}; wait for it or stop it") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _safe_name(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("._") or "item"
    if safe != text:
        safe = f"{safe[:120]}-{uuid.uuid5(uuid.NAMESPACE_URL, text).hex[:8]}"
    return safe


# -- the runner -------------------------------------------------------------------------------
class _Job:
    __slots__ = ("config", "length", "index")

    def __init__(self, config: RunConfig, length: int, index: int) -> None:
        self.config, self.length, self.index = config, length, index


def run_eval(task: Task | str, **kwargs: Any) -> EvalSummary:
    """Run (or resume) a sweep; see :func:`arun_eval` for the arguments."""
    return run_sync(arun_eval(task, **kwargs))


async def arun_eval(
    task: Task | str,
    *,
    root: str | Backend,
    child: str | Backend | None = None,
    root_loops: Sequence[int | None] = (None,),
    child_loops: Sequence[int | None] = (None,),
    depths: Sequence[int] = (1,),
    lengths: Sequence[int | str],
    n: int,
    out: str | os.PathLike[str],
    seed: int = 0,
    concurrency: int = 8,
    baselines: Sequence[str] = (),
    baseline_chars: int = 100_000,
    rlm_options: Mapping[str, Any] | None = None,
    task_options: Mapping[str, Any] | None = None,
    extend: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
) -> EvalSummary:
    """Sweep ``root_loops x child_loops x depths x lengths`` (plus ``baselines``) over
    ``n`` items per length of ``task``, writing to ``out``.

    ``root``/``child`` are spec strings (built once, shared by all configurations) or
    backends; ``child`` defaults to ``root``. ``rlm_options`` go to every :class:`RLM`
    (``max_iterations``, ``budget``, ``loop_policy``, ``max_tokens_per_call``, ...; its
    ``concurrency`` bounds child calls within a run, while ``concurrency`` here bounds
    items in flight). ``retry_errors`` re-runs jobs whose record has an error (the new
    record supersedes the old). Returns an :class:`EvalSummary`.
    """
    from loopagent.rlm import RLM

    # -- validate everything before touching the directory --
    task_options = dict(task_options or {})
    if isinstance(task, str):
        task_obj = get_task(task, **task_options)
    else:
        task_obj = task
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a positive integer, got {concurrency!r}")
    if isinstance(baseline_chars, bool) or not isinstance(baseline_chars, int) or baseline_chars < 1:
        raise ConfigError(f"baseline_chars must be a positive integer, got {baseline_chars!r}")
    lengths_c = list(dict.fromkeys(parse_length(x) for x in lengths))
    if not lengths_c:
        raise ConfigError("give at least one length")
    depths_l = list(dict.fromkeys(depths))
    if not depths_l or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths_l):
        raise ConfigError(f"depths must be integers >= 1, got {list(depths)!r}")
    baselines_l = list(dict.fromkeys(baselines))
    for b in baselines_l:
        if b not in BASELINES:
            raise ConfigError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    rlm_options = dict(rlm_options or {})
    for reserved in ("root", "child", "max_depth", "log_dir"):
        if reserved in rlm_options:
            raise ConfigError(f"rlm_options may not set {reserved!r}: the runner sets it")

    owned: list[Backend] = []
    specs: dict[str, Backend] = {}

    def build(spec: str | Backend) -> Backend:
        if isinstance(spec, Backend):
            return spec
        if spec not in specs:
            specs[spec] = build_model(spec)
            owned.append(specs[spec])
        return specs[spec]

    try:
        root_bundle = build(root)
        root_b = _for_role(root_bundle, "root")
        child_b = _for_role(root_bundle if child is None else build(child), "child")
        rl_values = _resolve_loops(root_b, root_loops, "root_loops (--root-loops)")
        cl_values = _resolve_loops(child_b, child_loops, "child_loops (--child-loops)")
        configs = [RunConfig(kind="rlm", root_loops=rl, child_loops=cl, depth=d)
                   for rl in rl_values for cl in cl_values for d in depths_l]
        if "root_only" in baselines_l:
            configs += [RunConfig(kind="root_only", root_loops=rl) for rl in rl_values]
        if "no_loops" in baselines_l:
            if not (root_b.looped or child_b.looped):
                raise ConfigError("the no_loops baseline needs a looped root or child model (neither is looped)")
            configs += [RunConfig(kind="no_loops", root_loops=1 if root_b.looped else None,
                                  child_loops=1 if child_b.looped else None, depth=d) for d in depths_l]
        # Keys, servers and RLM options are checked once here, so a typo fails before any work.
        root_b.check()
        if child_b is not root_b:
            child_b.check()
        try:
            probe = RLM(root=_LoopView(root_b, None), child=_LoopView(child_b, None), **rlm_options)
        except TypeError as e:
            raise ConfigError(f"bad rlm_options: {e}") from None
        # The effective options (defaults filled in) identify the sweep, so the API and the
        # CLI agree; the bound on concurrent child calls does not change results.
        effective = {k: v for k, v in probe.config().items() if k not in ("root", "child", "max_depth", "concurrency")}

        manifest_config = {
            "task": task_obj.name,
            "task_options": _jsonable(task_options),
            "root": _spec_name(root),
            "child": _spec_name(child) if child is not None else _spec_name(root),
            "root_loops": list(root_loops),
            "child_loops": list(child_loops),
            "depths": depths_l,
            "lengths": lengths_c,
            "n": n,
            "seed": seed,
            "baselines": baselines_l,
            "baseline_chars": baseline_chars,
            "rlm_options": _jsonable(effective),
        }

        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _DirLock(out_dir):
            manifest_config = _check_manifest(out_dir, manifest_config, extend=extend)
            old = read_manifest(out_dir)
            now = time.time()
            _write_json(out_dir / MANIFEST, {
                "version": MANIFEST_VERSION, "config": manifest_config,
                "created": (old or {}).get("created", now), "updated": now,
                "configs": [c.key for c in configs],
            })
            partial = out_dir / TRAJECTORIES / _PARTIAL
            shutil.rmtree(partial, ignore_errors=True)  # leftovers of killed runs (we hold the lock)
            partial.mkdir(parents=True, exist_ok=True)
            existing = load_records(out_dir, repair=True)
            runner = _Runner(
                task=task_obj, root=root_b, child=child_b, out=out_dir, partial=partial, n=n, seed=seed,
                concurrency=concurrency, baseline_chars=baseline_chars, rlm_options=rlm_options,
                progress=progress,
            )
            return await runner.run(configs, lengths_c, existing, retry_errors=retry_errors)
    finally:
        for b in owned:
            with contextlib.suppress(Exception):
                b.close()


class _Runner:
    def __init__(self, *, task: Task, root: Backend, child: Backend, out: Path, partial: Path, n: int, seed: int,
                 concurrency: int, baseline_chars: int, rlm_options: dict[str, Any], progress: bool) -> None:
        self.task, self.root, self.child, self.out, self.partial = task, root, child, out, partial
        self.n, self.seed, self.concurrency = n, seed, concurrency
        self.baseline_chars, self.rlm_options, self.show_progress = baseline_chars, rlm_options, progress
        self.timeout_s = self._timeout(rlm_options)
        self.new: list[Record] = []
        self._closing: set[asyncio.Future[None]] = set()

    def _background(self, awaitable: Any) -> None:
        """Clean-up work (stopping sandboxes, removing directories) off the items' path;
        awaited at the end of each length."""
        future = asyncio.ensure_future(awaitable)
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    @staticmethod
    def _timeout(options: Mapping[str, Any]) -> float | None:
        budget = options.get("budget")
        if budget is None:
            return None
        return budget.timeout_s if isinstance(budget, BaseModel) else dict(budget).get("timeout_s")

    async def run(self, configs: list[RunConfig], lengths: list[int], existing: list[Record], *, retry_errors: bool) -> EvalSummary:
        wanted = {c.key for c in configs}
        done = {r.job for r in latest_records(existing) if not (retry_errors and r.error)}
        done_by = {(c, length): 0 for c in wanted for length in lengths}
        for config, length, _ in done:
            if (config, length) in done_by:
                done_by[(config, length)] += 1
        total = len(configs) * len(lengths) * self.n
        skipped = sum(min(v, self.n) for v in done_by.values())
        start = time.perf_counter()
        scores = {r.job: r.score for r in latest_records(existing)}  # a retried job's new score replaces its old

        with open(self.out / RESULTS, "a", encoding="utf-8") as sink, _progress(self.show_progress, self.task.name, total, skipped) as bar:
            for length in lengths:
                if all(done_by[(c.key, length)] >= self.n for c in configs):
                    continue  # nothing left at this length: do not even generate its items
                items = await asyncio.to_thread(self.task.generate, self.n, length, self.seed)
                _check_items(items, self.n, length, self.task.name)
                jobs = [(c, item) for item in items for c in configs if (c.key, length, item.id) not in done]
                gate = asyncio.Semaphore(self.concurrency)

                async def one(config: RunConfig, item: Item, length: int = length) -> None:
                    async with gate:
                        record = await self._job(config, item, length)
                    sink.write(record.model_dump_json() + "\n")
                    sink.flush()
                    self.new.append(record)
                    scores[record.job] = record.score
                    bar.advance(record)

                try:
                    await asyncio.gather(*(one(c, item) for c, item in jobs))
                finally:
                    if self._closing:
                        await asyncio.gather(*list(self._closing), return_exceptions=True)
                del items, jobs
        elapsed = time.perf_counter() - start
        by_config: dict[str, list[float]] = {}
        for (config, length, _), score in scores.items():
            if length in lengths:
                by_config.setdefault(config, []).append(score)
        accuracy = {c.key: sum(by_config[c.key]) / len(by_config[c.key]) for c in configs if by_config.get(c.key)}
        summary = _summarize(self.out, self.task.name, total, skipped, self.new, elapsed, accuracy)
        _write_json(self.out / SUMMARY, summary.model_dump(mode="json"))
        with contextlib.suppress(OSError):
            self.partial.rmdir()
        return summary

    # -- one job -------------------------------------------------------------------------------
    async def _job(self, config: RunConfig, item: Item, length: int) -> Record:
        start = time.perf_counter()
        final_path = self.out / TRAJECTORIES / config.key / f"{_safe_name(item.id)}.jsonl"
        log_dir = self.partial / uuid.uuid4().hex
        base: dict[str, Any] = dict(config=config.key, kind=config.kind, root_loops=config.root_loops,
                                    child_loops=config.child_loops, depth=config.depth, length=length,
                                    item_id=item.id, task=item.task, length_chars=item.length_chars, gold=item.answer)
        try:
            if config.kind == "root_only":
                fields = await self._root_only(config, item, log_dir)
            else:
                fields = await self._rlm(config, item, log_dir)
            prediction = fields.pop("prediction")
            score = float(self.task.score(item, prediction))
            if not (0.0 <= score <= 1.0) or math.isnan(score):
                raise ValueError(f"{self.task.name}.score() returned {score!r}, outside [0, 1]")
            truncated = prediction is not None and len(prediction) > PREDICTION_LIMIT
            record_fields = dict(prediction=prediction[:PREDICTION_LIMIT] if truncated else prediction,
                                 prediction_truncated=truncated, score=score, **fields)
        except Exception as e:  # noqa: BLE001 - a crashed item is a result, not the end of the sweep
            record_fields = dict(prediction=None, score=0.0, finished=False, reason="error", iterations=0,
                                 usage=UsageTotals(), model_time_s=0.0, error=f"{type(e).__name__}: {e}")
        trajectory = _move_log(log_dir, final_path)
        # Removing a directory costs milliseconds on some filesystems: in the background.
        self._background(asyncio.to_thread(shutil.rmtree, log_dir, True))
        record_fields["trajectory"] = str(final_path.relative_to(self.out)) if trajectory else None
        return Record(**base, **record_fields, wall_s=time.perf_counter() - start)

    async def _rlm(self, config: RunConfig, item: Item, log_dir: Path) -> dict[str, Any]:
        from loopagent.rlm import RLM

        rlm = RLM(root=_LoopView(self.root, config.root_loops), child=_LoopView(self.child, config.child_loops),
                  max_depth=config.depth or 1, log_dir=log_dir, **self.rlm_options)
        t0 = time.perf_counter()
        # Starting the sandbox and loading the context blocks, so it runs in a thread:
        # items in flight do not wait for each other's sandboxes.
        session = await asyncio.to_thread(rlm.session, item.context)
        t1 = time.perf_counter()
        try:
            result = await session.aask(item.question)
        finally:
            # Stopping the worker and deleting its directory takes a few ms: done in the
            # background (awaited before the sweep returns), off the item's critical path.
            self._background(asyncio.to_thread(session.close))
        t2 = time.perf_counter()
        usage = result.usage
        return dict(prediction=result.answer, finished=result.finished, reason=result.reason,
                    iterations=result.iterations, usage=usage.total, usage_by_depth=usage.by_depth,
                    model_time_s=usage.total.wall_s, setup_s=t1 - t0, run_s=t2 - t1)

    async def _root_only(self, config: RunConfig, item: Item, log_dir: Path) -> dict[str, Any]:
        backend = _LoopView(self.root, config.root_loops)
        writer = TrajectoryWriter(log_dir / "root_only.jsonl")
        run_id = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        usage = RunUsage()
        try:
            text = item.context if isinstance(item.context, str) else json.dumps(item.context, ensure_ascii=False, default=str)
            shown = text[: self.baseline_chars]
            prompt = root_only_prompt(item.question, shown, omitted=len(text) - len(shown))
            writer.write(RunStart(run_id=run_id, query=item.question, context=describe_context(item.context).summary(),
                                  config={"baseline": "root_only", "root": backend.name, "root_loops": config.root_loops,
                                          "baseline_chars": self.baseline_chars, "shown_chars": len(shown)}))
            call = backend.acomplete([{"role": "user", "content": prompt}], loops=config.root_loops,
                                     max_tokens=self.rlm_options.get("max_tokens_per_call"))
            reason, detail, answer = "final", "", None
            try:
                completion = await (asyncio.wait_for(call, self.timeout_s) if self.timeout_s else call)
            except asyncio.TimeoutError:
                reason, detail = "timeout", f"no reply within {self.timeout_s:g} s"
            except BackendError as e:
                reason, detail = "model_error", str(e)
            else:
                usage.add(0, completion.model, completion.usage)
                writer.write(RootTurn(run_id=run_id, iteration=0, prompt=writer.clip(prompt) or "", completion=completion.text,
                                      model=completion.model, loops_chosen=config.root_loops,
                                      loops_executed=completion.loops.executed_mean if completion.loops else None,
                                      usage=completion.usage.model_dump()))
                found = find_final_in_text(completion.text)
                answer = found[1] if found and found[0] == "FINAL" else (strip_code_blocks(completion.text).strip() or completion.text.strip())
                writer.write(FinalAnswer(run_id=run_id, answer=answer, source="text"))
            if reason != "final":
                writer.write(LimitHit(run_id=run_id, reason=reason, detail=detail))
            wall = time.perf_counter() - t0
            writer.write(RunEnd(run_id=run_id, answer=answer, finished=reason == "final", reason=reason, iterations=1,
                                wall_s=wall, usage=usage.model_dump()))
        finally:
            writer.close()
        return dict(prediction=answer, finished=reason == "final", reason=reason, iterations=1, usage=usage.total,
                    usage_by_depth=usage.by_depth, model_time_s=usage.total.wall_s, setup_s=0.0, run_s=wall)


def root_only_prompt(question: str, context: str, *, omitted: int) -> str:
    """The root_only baseline's one prompt: the (truncated) context, then the question."""
    note = f"\n[... {omitted:,} more characters of the document were cut off ...]" if omitted > 0 else ""
    return (
        "Answer the question about the document below.\n\n"
        f"<document>\n{context}{note}\n</document>\n\n"
        f"Question: {question}\n\n"
        "Reply with the answer only, no explanation."
    )


def _move_log(log_dir: Path, final_path: Path) -> bool:
    """Move the job's one trajectory file to its final place (replacing a killed run's)."""
    try:
        logs = sorted(log_dir.glob("*.jsonl"))
        if not logs:
            return False
        final_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(logs[-1], final_path)
        return True
    except OSError:
        return False


def _check_items(items: list[Item], n: int, length: int, task: str) -> None:
    if len(items) != n:
        raise ValueError(f"task {task!r} made {len(items)} items for n={n} at length {length}")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task!r} made duplicate item ids at length {length}; ids must be unique for resuming")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _summarize(out: Path, task: str, total: int, skipped: int, new: list[Record], elapsed: float,
               accuracy: dict[str, float]) -> EvalSummary:
    ok = [r for r in new if r.error is None]
    model = sum(r.model_time_s for r in ok)
    overhead = sum(r.overhead_s for r in ok)
    runner = sum(r.wall_s - r.setup_s - r.run_s for r in ok)
    return EvalSummary(
        out=str(out), task=task, jobs_total=total, jobs_skipped=skipped, jobs_run=len(new),
        errors=sum(1 for r in new if r.error), elapsed_s=elapsed, items_per_s=len(new) / elapsed if elapsed > 0 else 0.0,
        accuracy=accuracy,
        mean_wall_s=_mean([r.wall_s for r in ok]), mean_model_time_s=_mean([r.model_time_s for r in ok]),
        mean_overhead_s=_mean([r.overhead_s for r in ok]), mean_setup_s=_mean([r.setup_s for r in ok]),
        mean_controller_s=_mean([r.run_s - r.model_time_s for r in ok]),
        mean_runner_s=_mean([r.wall_s - r.setup_s - r.run_s for r in ok]),
        overhead_ratio=overhead / model if model > 0 else None, runner_ratio=runner / model if model > 0 else None,
    )


# -- progress -----------------------------------------------------------------------------------
class _NoBar:
    def advance(self, record: Record) -> None:
        pass


class _Bar:
    def __init__(self, progress: Any, task_id: Any, name: str) -> None:
        self.progress, self.task_id, self.name = progress, task_id, name
        self.scores: list[float] = []
        self.errors = 0

    def advance(self, record: Record) -> None:
        self.scores.append(record.score)
        self.errors += record.error is not None
        desc = f"{self.name}  acc {_mean(self.scores):.3f}" + (f"  errors {self.errors}" if self.errors else "")
        self.progress.update(self.task_id, advance=1, description=desc)


@contextlib.contextmanager
def _progress(enabled: bool, name: str, total: int, done: int) -> Any:
    if not enabled:
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as progress:
        task_id = progress.add_task(name, total=total, completed=done)
        yield _Bar(progress, task_id, name)


__all__ = [
    "BASELINES", "EvalSummary", "Record", "ResultDirConflict", "ResultsCorrupt", "RunConfig", "arun_eval",
    "format_length", "latest_records", "load_records", "parse_length", "parse_loops_list", "read_manifest",
    "root_only_prompt", "run_eval",
]
