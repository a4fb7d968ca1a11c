"""Small helpers shared by the scripts in bench/ (standard library only).

- :func:`machine_info`: what the numbers were measured on (goes into every JSON);
- :func:`median`, :func:`p90`, :func:`summarize`: statistics over samples;
- :func:`linear_fit`: least-squares line ``y = a + b*x`` with its R^2;
- :func:`rss_bytes`, :func:`rss_of`: resident memory of this or another process;
- :class:`Row`, :func:`print_table`: the side-by-side table every benchmark prints;
- :func:`print_grid`: a plain table with any columns (benchmarks without a peer);
- :func:`write_json`: write results, creating the folder;
- :class:`BaseAdapter`, :func:`bench_args`, :func:`make_peer`, :func:`run_steps`,
  :class:`RowMaker`, :func:`finish`: the driver every benchmark shares (flags, the rlms peer or n/a
  with a reason, measurements that fail as n/a, table rows, table + notes + JSON
  + exit status).

Scripts import it as ``from _common import ...`` (``python bench/x.py`` puts
bench/ first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
NA = "n/a"
MS = 1e3


def log(msg: str) -> None:
    """Progress and warnings go to stderr; stdout carries the table and the results line."""
    print(msg, file=sys.stderr, flush=True)


# -- machine ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU count, Python, OS, date and the versions of ``packages``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "mem_total_bytes": _mem_total_bytes(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "euid": os.geteuid() if hasattr(os, "geteuid") else None,
        "packages": {name: package_version(name) for name in packages},
    }


# -- statistics ------------------------------------------------------------------------
def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    return quantile(samples, 0.5)


def p90(samples: Sequence[float]) -> float:
    return quantile(samples, 0.9)


def summarize(samples: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """median / p90 / min / max / n of ``samples``, each multiplied by ``scale``."""
    return {
        "median": median(samples) * scale,
        "p90": p90(samples) * scale,
        "min": min(samples) * scale,
        "max": max(samples) * scale,
        "n": len(samples),
    }


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``y = a + b*x``: ``{"a", "b", "r2"}`` (needs 2+ distinct xs).

    R^2 is 1 - SS_res / SS_tot; it is 1.0 when every y is the same (a flat line fits exactly).
    """
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("need two or more (x, y) pairs")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need two or more distinct xs")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    return {"a": a, "b": b, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


# -- memory ----------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_of(pid: int | str = "self") -> int | None:
    """Current resident set size in bytes of a process (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes() -> int:
    """Current RSS of this process; falls back to the peak (ru_maxrss) off Linux."""
    now = rss_of("self")
    if now is not None:
        return now
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- table -----------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a comparison table.

    ``ours`` and ``peer`` are numbers in the row's own unit (or None for n/a);
    ``fmt`` turns one into text; ``passed`` is True/False/None (no target).
    """

    metric: str
    ours: float | None
    peer: float | None
    target: str = ""
    passed: bool | None = None
    unit: str = ""
    note: str = ""
    peer_note: str = ""
    comparable: bool = True  # False: a ratio means nothing here (e.g. growth near 0)
    fmt: Callable[[float], str] | None = field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float | None:
        if not self.comparable or self.ours is None or self.peer is None or self.peer <= 0 or self.ours < 0:
            return None
        return self.ours / self.peer

    def cell(self, value: float | None, why: str = "") -> str:
        if value is None:
            return f"{NA} ({why})" if why else NA
        text = self.fmt(value) if self.fmt else f"{value:.4g}"
        return f"{text} {self.unit}".rstrip()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fmt", None)
        d["ratio"] = self.ratio
        return d


def fmt_num(value: float) -> str:
    """3 significant digits, no exponent for everyday magnitudes."""
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 100:
        return f"{value:,.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    if mag >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2g}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return NA
    if ratio < 1:
        return f"{ratio:.2g}x"
    if ratio < 10:
        return f"{ratio:.2f}x"
    if ratio < 100:
        return f"{ratio:.1f}x"
    return f"{ratio:,.0f}x"


def print_table(
    rows: Sequence[Row],
    *,
    title: str = "",
    ours: str = "ours",
    peer: str = "peer",
    file: Any = None,
) -> str:
    """Print a plain-text table (copy-paste friendly; no terminal width games)."""
    header = ["metric", ours, peer, f"ratio ({ours}/{peer})", "target", "pass"]
    body = []
    for r in rows:
        verdict = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        body.append([r.metric, r.cell(r.ours, r.note), r.cell(r.peer, r.peer_note), fmt_ratio(r.ratio),
                     r.target or "-", verdict])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i in (0, 4, 5) else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = []
    if title:
        out.append(title)
    out += [line(header), sep, *(line(b) for b in body)]
    text = "\n".join(out)
    print(text, file=file or sys.stdout, flush=True)
    return text


def print_grid(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str = "",
    left: Sequence[int] = (0,),
    file: Any = None,
) -> str:
    """Print a plain-text table with any columns, in :func:`print_table`'s style.

    Cells are shown with ``str()``; the columns numbered in ``left`` are left-aligned,
    the others right-aligned. Returns the text.
    """
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [title] if title else []
    out += [line(header), sep, *(line(b) for b in body)]
    text = "\n".join(out)
    print(text, file=file or sys.stdout, flush=True)
    return text


# -- output ----------------------------------------------------------------------------
def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, creating parent folders; returns the path."""
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


# -- driver ----------------------------------------------------------------------------
class BaseAdapter:
    """One library's side of a benchmark. ``name`` labels its log lines; ``shutdown()``
    releases whatever its constructor started (nothing by default)."""

    name = ""

    def shutdown(self) -> None:
        pass


def bench_args(
    description: str, quick_help: str, default_out: Path, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse the flags every benchmark takes: --quick, --out, --skip-rlms, --strict.

    ``description`` is the script's docstring; its first paragraph is shown.
    """
    ap = argparse.ArgumentParser(description=description.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", type=Path, default=default_out, help=f"JSON output path (default {default_out})")
    ap.add_argument("--skip-rlms", action="store_true", help="measure loopagent alone (rlms columns show n/a)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return ap.parse_args(argv)


def make_peer(factory: Callable[[], Any], skip: bool) -> tuple[Any | None, str]:
    """Construct the rlms adapter: ``(adapter, "")``, or ``(None, why)`` when it is
    skipped, not installed or fails to start (the rlms columns then show n/a (why))."""
    if skip:
        return None, "skipped"
    try:
        return factory(), ""
    except ImportError as e:
        log(f"rlms unavailable ({e}); install with pip install -e '.[bench]'. Measuring loopagent alone.")
        return None, "rlms not installed"
    except Exception as e:
        log(f"rlms unavailable ({type(e).__name__}: {e}). Measuring loopagent alone.")
        return None, f"rlms failed to start: {type(e).__name__}"


def run_steps(name: str, steps: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """Run each measurement in order; one that raises is kept as ``{"error", "traceback"}``
    (shown as n/a) and the rest still run."""
    results: dict[str, Any] = {}
    for key, step in steps.items():
        t0 = time.perf_counter()
        try:
            results[key] = step()
        except Exception as e:  # keep going: report the failure as n/a
            results[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            log(f"[{name}] {key}: FAILED {type(e).__name__}: {e}")
        else:
            log(f"[{name}] {key}: done in {time.perf_counter() - t0:.1f} s")
    return results


def lookup(res: dict[str, Any] | None, *path: str) -> float | None:
    """The number at ``res[path[0]][path[1]]...``, or None where it is missing or not a number."""
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return float(cur) if isinstance(cur, (int, float)) else None


def why_missing(res: dict[str, Any] | None, metric: str, default: str) -> str:
    """Why a cell is n/a: ``default`` when there are no results, the error's type when the
    measurement failed, else ""."""
    if res is None:
        return default
    entry = res.get(metric)
    if isinstance(entry, dict) and "error" in entry:
        return "error: " + entry["error"].split(":")[0]
    return ""


Check = Callable[[float, float | None], bool | None]


class RowMaker:
    """Builds the rows of a loopagent-vs-rlms table from the two results dicts.

    ``row(metric, key, path, unit, ...)`` appends (and returns) a :class:`Row` with
    ``ours[key][path...]`` and ``peer[key][path...]``; ``ours_from=(key, path)`` reads
    loopagent's number from elsewhere. ``check(ours, peer)`` sets ``passed`` (False
    when loopagent's number is missing). The rows are in ``.rows``.
    """

    def __init__(self, ours: dict[str, Any], peer: dict[str, Any] | None, peer_reason: str) -> None:
        self.ours = ours
        self.peer = peer
        self.peer_reason = peer_reason
        self.rows: list[Row] = []

    def __call__(self, metric: str, key: str, path: tuple[str, ...], unit: str, target: str = "",
                 check: Check | None = None, fmt: Callable[[float], str] = fmt_num,
                 comparable: bool = True, ours_from: tuple[str, tuple[str, ...]] | None = None) -> Row:
        okey, opath = ours_from or (key, path)
        o, p = lookup(self.ours, okey, *opath), lookup(self.peer, key, *path)
        r = Row(metric=metric, ours=o, peer=p, unit=unit, target=target, fmt=fmt, comparable=comparable,
                note=why_missing(self.ours, okey, ""), peer_note=why_missing(self.peer, key, self.peer_reason))
        if check is not None:
            r.passed = check(o, p) if o is not None else False
        self.rows.append(r)
        return r


def finish(
    args: argparse.Namespace,
    *,
    benchmark: str,
    versus: str,
    rows: Sequence[Row],
    notes: Sequence[str],
    packages: Sequence[str],
    config: dict[str, Any],
    ours: dict[str, Any],
    peer: dict[str, Any] | None,
    peer_reason: str,
    wall0: float,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> int:
    """Print the table and the notes, write the JSON to ``args.out`` and return the exit
    status: 1 when a loopagent measurement failed, or (with --strict) a target is missed.

    JSON keys: benchmark, mode, machine, config, *before*, loopagent, rlms,
    rlms_unavailable, *after*, rows, notes, elapsed_s.
    """
    mode = "quick" if args.quick else "full"
    print()
    print_table(rows, title=f"{benchmark} benchmark ({mode}; {versus})", ours="loopagent", peer="rlms")
    for note in notes:
        print("note: " + note)

    elapsed = time.perf_counter() - wall0
    data = {
        "benchmark": benchmark,
        "mode": mode,
        "machine": machine_info(packages),
        "config": config,
        **(before or {}),
        "loopagent": ours,
        "rlms": peer,
        "rlms_unavailable": peer_reason or None,
        **(after or {}),
        "rows": [r.as_dict() for r in rows],
        "notes": list(notes),
        "elapsed_s": elapsed,
    }
    path = write_json(args.out, data)
    print(f"results: {path}  ({elapsed:.1f} s; rlms {package_version('rlms') or 'not installed'})")

    failed = [k for k, v in ours.items() if isinstance(v, dict) and "error" in v]
    if failed:
        log(f"loopagent measurements failed: {', '.join(failed)}")
        return 1
    if args.strict and any(r.passed is False for r in rows):
        return 1
    return 0
