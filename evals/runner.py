"""The evaluation runner: sweep root/child loops x depth x length over a task's items.

Every (configuration, item) pair is one run, appended to ``OUT/results.jsonl`` as one
validated :class:`~loopagent.evals.store.Record` per line and flushed at once, with its
trajectory under ``OUT/trajectories/<config>/`` (see :mod:`loopagent.evals.store`).

Resuming: run the same command again. Records already in ``results.jsonl`` are
skipped (never re-run, never lost); items that were in flight when the process died
have no record and run again; a torn last line (the process was killed mid-write)
is cut off and its item runs again. A *different* configuration against an existing
directory raises :class:`~loopagent.evals.store.ResultDirConflict`, except that
``extend=True`` may add values to the grid axes (root/child loops, depths, lengths,
baselines) while everything else (task, options, specs, n, seed, RLM options) stays the
same: the existing records keep their meaning, since each is keyed by its own
configuration and items depend only on (task, options, n, length, seed).

Example::

    from loopagent.evals.runner import run_eval

    summary = run_eval("sniah", root="litellm:openai/gpt-4o-mini", child="hf:ckpt/looped",
                       root_loops=[None], child_loops=[1, 2, 4, 8], depths=[1, 2],
                       lengths=["32k", "1m"], n=50, out="evals/out/sniah",
                       baselines=["root_only", "no_loops"])
    summary.overhead_ratio   # runner + controller + sandbox time per unit of model time

The grid (loop axes, lengths) is :mod:`loopagent.evals.grid`; how each kind of
configuration, baselines included, answers an item is :mod:`loopagent.evals.baselines`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from loopagent.aio import run_sync
from loopagent.backends.base import Backend
from loopagent.errors import ConfigError
from loopagent.evals.base import Item, Task, get_task
from loopagent.evals.baselines import Strategy, make_strategies
from loopagent.evals.grid import RunConfig, build_grid, check_baselines, check_depths, parse_lengths
from loopagent.evals.store import PREDICTION_LIMIT, Record, ResultsDir, latest_records, load_records
from loopagent.models import model as build_model
from loopagent.usage import UsageTotals
from loopagent.validation import check_int

#: RLM options that came after the first sweeps, with their defaults (see arun_eval).
_LATER_DEFAULTS: dict[str, Any] = {"models": {}, "oversize": "error",
                                   "compaction": {"compact_at": 0.8, "keep_turns": 2, "root_context_window": None}}
_UNSET = object()


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
    mean_runner_s: float = Field(
        description="Part of the overhead: the runner's own (scheduling, scoring, logs, records).")
    overhead_ratio: float | None = Field(description="Sum of overhead / sum of model time.")
    runner_ratio: float | None = Field(description="Sum of the runner's own time / sum of model time.")


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
    # -- validate everything before touching the directory --
    task_options = dict(task_options or {})
    task_obj = get_task(task, **task_options) if isinstance(task, str) else task
    check_int(n, "n", minimum=1)
    check_int(concurrency, "concurrency", minimum=1)
    check_int(baseline_chars, "baseline_chars", minimum=1)
    lengths_c = parse_lengths(lengths)
    depths_l = check_depths(depths)
    baselines_l = check_baselines(baselines)
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
        root_b = root_bundle.for_role("root")
        child_b = (root_bundle if child is None else build(child)).for_role("child")
        configs = build_grid(root_b, child_b, root_loops=root_loops, child_loops=child_loops, depths=depths_l,
                             baselines=baselines_l)
        # Keys, servers and RLM options are checked once here, so a typo fails before any work.
        root_b.check()
        if child_b is not root_b:
            child_b.check()
        runner = _Runner(task=task_obj, root=root_b, child=child_b, n=n, seed=seed, concurrency=concurrency,
                         baseline_chars=baseline_chars, rlm_options=rlm_options, progress=progress)
        try:
            probe = runner.strategies["rlm"].rlm(RunConfig(kind="rlm"))
        except TypeError as e:
            raise ConfigError(f"bad rlm_options: {e}") from None
        # The effective options (defaults filled in) identify the sweep, so the API and the
        # CLI agree; the bound on concurrent child calls and the sub-call cache (a greedy reply
        # is the same either way) do not change results. Options added later are left out at
        # their defaults, so a sweep started before they existed still resumes.
        effective = {k: v for k, v in probe.config().items()
                     if k not in ("root", "child", "max_depth", "concurrency", "cache")
                     and _LATER_DEFAULTS.get(k, _UNSET) != v}
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
        with ResultsDir(out) as store:
            existing = store.open(manifest_config, [c.key for c in configs], extend=extend)
            return await runner.run(store, configs, lengths_c, existing, retry_errors=retry_errors)
    finally:
        for b in owned:
            with contextlib.suppress(Exception):
                b.close()


class _Runner:
    """Runs the jobs of a sweep into a results directory, ``concurrency`` items at a time."""

    def __init__(self, *, task: Task, root: Backend, child: Backend, n: int, seed: int, concurrency: int,
                 baseline_chars: int, rlm_options: dict[str, Any], progress: bool) -> None:
        self.task, self.n, self.seed, self.concurrency, self.show_progress = task, n, seed, concurrency, progress
        self.strategies: dict[str, Strategy] = dict(make_strategies(
            root, child, rlm_options, baseline_chars=baseline_chars, background=self._background))
        self.new: list[Record] = []
        self._closing: set[asyncio.Future[None]] = set()

    def _background(self, awaitable: Any) -> None:
        """Clean-up work (stopping sandboxes, removing directories) off the items' path;
        awaited at the end of each length."""
        future = asyncio.ensure_future(awaitable)
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    async def run(self, store: ResultsDir, configs: list[RunConfig], lengths: list[int], existing: list[Record], *,
                  retry_errors: bool) -> EvalSummary:
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

        with open(store.results, "a", encoding="utf-8") as sink, \
                _progress(self.show_progress, self.task.name, total, skipped) as bar:
            for length in lengths:
                if all(done_by[(c.key, length)] >= self.n for c in configs):
                    continue  # nothing left at this length: do not even generate its items
                items = await asyncio.to_thread(self.task.generate, self.n, length, self.seed)
                _check_items(items, self.n, length, self.task.name)
                jobs = [(c, item) for item in items for c in configs if (c.key, length, item.id) not in done]
                gate = asyncio.Semaphore(self.concurrency)

                async def one(config: RunConfig, item: Item, length: int = length,
                              gate: asyncio.Semaphore = gate) -> None:
                    async with gate:
                        record = await self._job(store, config, item, length)
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
        summary = _summarize(store.out, self.task.name, total, skipped, self.new, elapsed, accuracy)
        store.write_summary(summary.model_dump(mode="json"))
        store.close_partial()
        return summary

    async def _job(self, store: ResultsDir, config: RunConfig, item: Item, length: int) -> Record:
        start = time.perf_counter()
        log_dir = store.scratch()
        base: dict[str, Any] = dict(config=config.key, kind=config.kind, root_loops=config.root_loops,
                                    child_loops=config.child_loops, depth=config.depth, length=length,
                                    item_id=item.id, task=item.task, length_chars=item.length_chars, gold=item.answer)
        try:
            attempt = await self.strategies[config.kind].attempt(config, item, log_dir)
            result, usage = attempt.result, attempt.result.usage
            prediction = result.answer
            score = float(self.task.score(item, prediction))
            if not (0.0 <= score <= 1.0) or math.isnan(score):
                raise ValueError(f"{self.task.name}.score() returned {score!r}, outside [0, 1]")
            truncated = prediction is not None and len(prediction) > PREDICTION_LIMIT
            fields: dict[str, Any] = dict(
                prediction=prediction[:PREDICTION_LIMIT] if truncated else prediction, prediction_truncated=truncated,
                score=score, finished=result.finished, reason=result.reason, iterations=result.iterations,
                usage=usage.total, usage_by_depth=usage.by_depth, model_time_s=usage.total.wall_s,
                setup_s=attempt.setup_s, run_s=attempt.run_s)
        except Exception as e:  # noqa: BLE001 - a crashed item is a result, not the end of the sweep
            fields = dict(prediction=None, score=0.0, finished=False, reason="error", iterations=0,
                          usage=UsageTotals(), model_time_s=0.0, error=f"{type(e).__name__}: {e}")
        fields["trajectory"] = store.keep_trajectory(log_dir, config.key, item.id)
        # Removing a directory costs milliseconds on some filesystems: in the background.
        self._background(asyncio.to_thread(shutil.rmtree, log_dir, True))
        return Record(**base, **fields, wall_s=time.perf_counter() - start)


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
        errors=sum(1 for r in new if r.error), elapsed_s=elapsed,
        items_per_s=len(new) / elapsed if elapsed > 0 else 0.0,
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
def _progress(enabled: bool, name: str, total: int, done: int) -> Iterator[_Bar | _NoBar]:
    if not enabled:
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as progress:
        task_id = progress.add_task(name, total=total, completed=done)
        yield _Bar(progress, task_id, name)


# load_records and latest_records live in loopagent.evals.store; they stay importable from
# here for code that reads results through the runner (the embedded pipeline).
__all__ = ["EvalSummary", "arun_eval", "latest_records", "load_records", "run_eval"]
