"""Small helpers shared by the scripts in bench/ (standard library only).

- :func:`machine_info`: what the numbers were measured on (goes into every JSON);
- :func:`median`, :func:`p90`, :func:`summarize`: statistics over samples;
- :func:`rss_bytes`, :func:`rss_of`: resident memory of this or another process;
- :class:`Row`, :func:`print_table`: the side-by-side table every benchmark prints;
- :func:`write_json`: write results, creating the folder.

Scripts import it as ``from _common import ...`` (``python bench/x.py`` puts
bench/ first on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
NA = "n/a"


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
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
        body.append([r.metric, r.cell(r.ours, r.note), r.cell(r.peer, r.peer_note), fmt_ratio(r.ratio), r.target or "-", verdict])
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


# -- output ----------------------------------------------------------------------------
def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, creating parent folders; returns the path."""
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
