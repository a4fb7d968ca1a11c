#!/usr/bin/env python
"""Looped-transformer benchmark: how cost and KV memory grow with the loop budget.

Run from the repository root (after ``pip install -e '.[looped]'``)::

    python bench/looped.py            # full run, loops 1..16, about a minute on 2 idle cores
    python bench/looped.py --quick    # smoke test: loops 1, 2, 4, small shapes, 1 repeat
    python bench/looped.py --out /tmp/x.json --threads 4

A small random ``LoopedForCausalLM`` (fp32, CPU, ``torch.set_num_threads(2)`` by
default; prelude 1 / core 2 / coda 1) is measured for every loop budget L in
1, 2, 4, 8, 16 and for both ``kv_cache`` modes, ``per_loop`` and ``shared`` (the
same weights in both):

1. prefill: one forward of a batch of prompts with ``use_cache=True``
   (batch 4 x 128 tokens; ``shared``: 4 x 32, see below); tokens/s and seconds
   per token. A shared cache processes positions one at a time (that is its exact
   semantics), so its prefill is a loop of single-position forwards and runs at
   about decode speed; its prompt is kept short to bound the run time, and its
   per-token time still compares (each position is its own forward);
2. decode: cached greedy generation after a 64-token prompt: 32 single-token
   forwards, each feeding the argmax of the last one, from a copy of the prompt's
   cache (the prompt's prefill is not timed); tokens/s over batch x 32 tokens.
   Once per mode the tokens are checked against ``model.generate(do_sample=False)``;
3. KV memory: ``LoopedCache.nbytes()`` after the prompt and the 32 decode steps.

Timings are medians over the repeats; every repeat goes through all loop budgets
in turn (after one untimed warm-up round), so slow drift hits every L alike.

Fits: ``cost(L) = a + b*L`` by least squares on the median seconds per token,
per cache mode, for prefill and decode (a: the loop-independent part, embeddings,
prelude, coda, head and Python overhead; b: one loop of the core), with R^2 and
time(16)/time(1); and the same line over KV bytes.

4. adaptive depth (compute-bound: hidden 512, 8 heads, prelude 1 / core 4 / coda 1,
   max_loops 8; 32 requests x 128 prompt tokens, 32 new tokens, scaled down from 256/64
   to keep a 2-core run within minutes): one batched prefill with per-row budgets and
   cached greedy decoding, as the hf backend runs a batch, for (a) all rows at 8 loops,
   (b) budgets 1..8 mixed in the same batch, (c) all at 8 with the exit gate on (its
   random weights have std 1/sqrt(hidden) and its bias is set by bisection so that the
   mean depth is about 4). Forward hooks on the core layers count the token rows they
   see; that count must equal the model's reported ``core_tokens``. Walls are the minima
   of interleaved repeats. Targets: wall(b)/wall(a) <= 0.70 (ideal 4.5/8 = 0.56) and
   wall(c)/wall(a) <= mean depth/8 + 0.15.

Targets: per-token cost grows about linearly in loops (R^2 >= 0.95); ``per_loop``
KV memory grows linearly with loops (R^2 >= 0.999, slope > 0, equal to the
layout's formula) while ``shared`` stays flat (the same bytes for every L). The
tables are printed and everything is written as JSON (default
bench/results/looped.json). A missed target does not change the exit status (use
--strict for that); a measurement that fails does.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    fmt_num,
    linear_fit,
    log,
    machine_info,
    median,
    package_version,
    print_grid,
    run_steps,
    write_json,
)

DEFAULT_OUT = RESULTS_DIR / "looped.json"
MODES = ("per_loop", "shared")
TIME_R2 = 0.95  # per-token time vs loops: "about linear"
KV_R2 = 0.999  # per_loop KV bytes vs loops: linear (exactly, by construction)
US = 1e6


@dataclass(frozen=True)
class Config:
    loops: tuple[int, ...]
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_prelude_layers: int
    num_core_layers: int
    num_coda_layers: int
    batch: int
    prefill_tokens: int  # per sequence, per_loop prefill
    shared_prefill_tokens: int  # per sequence, shared prefill (runs position by position)
    prompt_tokens: int  # per sequence, before decoding
    new_tokens: int  # decode steps per sequence
    reps: int
    warmup_rounds: int
    threads: int

    @classmethod
    def for_mode(cls, quick: bool, threads: int) -> Config:
        common = dict(num_attention_heads=4, num_prelude_layers=1, num_core_layers=2, num_coda_layers=1,
                      threads=threads)
        if quick:
            return cls(loops=(1, 2, 4), vocab_size=256, hidden_size=64, batch=2, prefill_tokens=32,
                       shared_prefill_tokens=32, prompt_tokens=16, new_tokens=8, reps=1, warmup_rounds=1, **common)
        return cls(loops=(1, 2, 4, 8, 16), vocab_size=512, hidden_size=256, batch=4, prefill_tokens=128,
                   shared_prefill_tokens=32, prompt_tokens=64, new_tokens=32, reps=5, warmup_rounds=1, **common)


# -- model -------------------------------------------------------------------------------
def build_models(cfg: Config) -> dict[str, Any]:
    """One random model per cache mode, with the same weights."""
    import torch

    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM

    models: dict[str, Any] = {}
    for mode in MODES:
        conf = LoopedConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
            num_prelude_layers=cfg.num_prelude_layers, num_core_layers=cfg.num_core_layers,
            num_coda_layers=cfg.num_coda_layers, default_loops=1, max_loops=max(cfg.loops), kv_cache=mode,
            pad_token_id=0,
        )
        torch.manual_seed(0)
        model = LoopedForCausalLM(conf).eval()
        if models:
            model.load_state_dict(next(iter(models.values())).state_dict())
        models[mode] = model
    return models


def clone_cache(cache: Any) -> Any:
    """A fork of a LoopedCache that can be extended without touching the original (entries
    are immutable records; a fork that extends a shared buffer after another one did copies first)."""
    new = copy.copy(cache)
    new.entries = dict(cache.entries)
    return new


def expected_kv_bytes(model: Any, cfg: Config, loops: int, positions: int) -> int:
    """Bytes of keys + values the cache layout should hold (fp32)."""
    c = model.config
    core = c.num_core_layers * (loops if c.kv_cache == "per_loop" else 1)
    layers = c.num_prelude_layers + core + c.num_coda_layers
    return 2 * cfg.batch * c.num_key_value_heads * c.head_dim * positions * layers * 4


# -- measurements ------------------------------------------------------------------------
def measure_mode(model: Any, cfg: Config, mode: str) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(1)
    t_prefill = cfg.prefill_tokens if mode == "per_loop" else cfg.shared_prefill_tokens
    prefill_ids = torch.randint(0, cfg.vocab_size, (cfg.batch, t_prefill), generator=gen)
    prompt_ids = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.prompt_tokens), generator=gen)
    prefill_s: dict[int, list[float]] = {L: [] for L in cfg.loops}
    decode_s: dict[int, list[float]] = {L: [] for L in cfg.loops}
    kv: dict[int, int] = {}
    tokens: dict[int, Any] = {}

    with torch.inference_mode():
        prompt_state = {}
        for L in cfg.loops:  # the prompt's cache for every L, untimed
            out = model(prompt_ids, loops=L, use_cache=True)
            prompt_state[L] = (out.cache, out.logits[:, -1].argmax(-1, keepdim=True))

        for rnd in range(cfg.warmup_rounds + cfg.reps):
            timed = rnd >= cfg.warmup_rounds
            gc.collect()
            for L in cfg.loops:
                t0 = time.perf_counter()
                model(prefill_ids, loops=L, use_cache=True)
                t1 = time.perf_counter()

                cache, tok = clone_cache(prompt_state[L][0]), prompt_state[L][1]
                toks = [tok]
                t2 = time.perf_counter()
                for _ in range(cfg.new_tokens):
                    out = model(tok, cache=cache, loops=L, use_cache=True)
                    cache = out.cache
                    tok = out.logits[:, -1].argmax(-1, keepdim=True)
                    toks.append(tok)
                t3 = time.perf_counter()
                if timed:
                    prefill_s[L].append(t1 - t0)
                    decode_s[L].append(t3 - t2)
                kv[L] = cache.nbytes()
                tokens[L] = torch.cat(toks, 1)

        # The hand-written greedy loop must be what generate() does.
        check_L = cfg.loops[min(1, len(cfg.loops) - 1)]
        ref = model.generate(prompt_ids, loops=check_L, max_new_tokens=cfg.new_tokens + 1, do_sample=False)
        matches = bool(torch.equal(ref[:, cfg.prompt_tokens:], tokens[check_L]))

    positions = cfg.prompt_tokens + cfg.new_tokens
    n_prefill = cfg.batch * t_prefill
    n_decode = cfg.batch * cfg.new_tokens
    per_loops: dict[str, Any] = {}
    for L in cfg.loops:
        p, d = median(prefill_s[L]), median(decode_s[L])
        per_loops[str(L)] = {
            "prefill": {"tokens": n_prefill, "median_s": p, "min_s": min(prefill_s[L]), "s_per_token": p / n_prefill,
                        "tokens_per_s": n_prefill / p, "samples_s": prefill_s[L]},
            "decode": {"tokens": n_decode, "median_s": d, "min_s": min(decode_s[L]), "s_per_token": d / n_decode,
                       "tokens_per_s": n_decode / d, "samples_s": decode_s[L]},
            "kv": {"positions": positions, "nbytes": kv[L],
                   "expected_nbytes": expected_kv_bytes(model, cfg, L, positions)},
        }
    return {
        "prefill_shape": [cfg.batch, t_prefill],
        "decode_shape": {"batch": cfg.batch, "prompt": cfg.prompt_tokens, "new_tokens": cfg.new_tokens},
        "loops": per_loops,
        "generate_check": {"loops": check_L, "matches": matches},
    }


# -- fits and targets --------------------------------------------------------------------
def fit_mode(res: dict[str, Any], cfg: Config, mode: str) -> dict[str, Any]:
    xs = [float(L) for L in cfg.loops]
    first, last = str(cfg.loops[0]), str(cfg.loops[-1])
    out: dict[str, Any] = {}
    for phase in ("prefill", "decode"):
        ys = [res["loops"][str(L)][phase]["s_per_token"] for L in cfg.loops]
        f = linear_fit(xs, ys)
        out[phase] = {
            "quantity": "seconds per token",
            **f,
            "a_over_b": f["a"] / f["b"] if f["b"] > 0 else None,
            "ratio_last_over_first": ys[-1] / ys[0],
            "ratio_loops": [cfg.loops[-1], cfg.loops[0]],
            "target": f"R^2 >= {TIME_R2}",
            "passed": f["r2"] >= TIME_R2,
        }
    ys = [float(res["loops"][str(L)]["kv"]["nbytes"]) for L in cfg.loops]
    f = linear_fit(xs, ys)
    formula = all(res["loops"][str(L)]["kv"]["nbytes"] == res["loops"][str(L)]["kv"]["expected_nbytes"]
                  for L in cfg.loops)
    if mode == "per_loop":
        target = f"linear: R^2 >= {KV_R2}, b > 0, = layout formula"
        passed = f["r2"] >= KV_R2 and f["b"] > 0 and formula
    else:
        target = "flat: same bytes at every L"
        passed = max(ys) == min(ys)
    out["kv_bytes"] = {
        "quantity": "bytes",
        **f,
        "ratio_last_over_first": ys[-1] / ys[0],
        "ratio_loops": [int(last), int(first)],
        "matches_formula": formula,
        "target": target,
        "passed": passed,
    }
    return out


def fmt_us(seconds: float) -> str:
    return fmt_num(seconds * US)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def print_tables(ours: dict[str, Any], fits: dict[str, Any], cfg: Config, mode: str) -> None:
    lo, hi = cfg.loops[0], cfg.loops[-1]

    def cell(m: str, L: int, *path: str, fmt: Any = fmt_num) -> str:
        cur: Any = ours.get(m, {})
        if "error" in cur:
            return "n/a (error)"
        cur = cur["loops"][str(L)]
        for p in path:
            cur = cur[p]
        return fmt(cur)

    print()
    header = ["loops"]
    for what in ("prefill tok/s", "decode tok/s", "KV after decode"):
        header += [f"{what} {m}" for m in MODES]
    rows = []
    for L in cfg.loops:
        row = [str(L)]
        row += [cell(m, L, "prefill", "tokens_per_s") for m in MODES]
        row += [cell(m, L, "decode", "tokens_per_s") for m in MODES]
        row += [cell(m, L, "kv", "nbytes", fmt=fmt_bytes) for m in MODES]
        rows.append(row)
    print_grid(header, rows, title=f"looped benchmark ({mode}; medians of {cfg.reps}, {cfg.threads} threads)", left=())

    print()
    header = ["cache", "phase", "a (us/tok)", "b (us/tok/loop)", "R^2", f"t({hi})/t({lo})", "target", "pass"]
    rows = []
    for m in MODES:
        for phase in ("prefill", "decode"):
            f = fits.get(m, {}).get(phase)
            if f is None:
                rows.append([m, phase, "n/a", "n/a", "n/a", "n/a", f"R^2 >= {TIME_R2}", "FAIL"])
                continue
            rows.append([m, phase, fmt_us(f["a"]), fmt_us(f["b"]), f"{f['r2']:.4f}",
                         f"{f['ratio_last_over_first']:.2f}x", f["target"], "PASS" if f["passed"] else "FAIL"])
    print_grid(header, rows, title="per-token time: cost(L) = a + b*L", left=(0, 1, 6, 7))

    print()
    header = ["cache", f"KV at L={lo}", f"KV at L={hi}", "b (KiB/loop)", "R^2", f"m({hi})/m({lo})", "target", "pass"]
    rows = []
    for m in MODES:
        f = fits.get(m, {}).get("kv_bytes")
        if f is None:
            rows.append([m, "n/a", "n/a", "n/a", "n/a", "n/a", "-", "FAIL"])
            continue
        rows.append([m, cell(m, lo, "kv", "nbytes", fmt=fmt_bytes), cell(m, hi, "kv", "nbytes", fmt=fmt_bytes),
                     fmt_num(f["b"] / 1024) if f["b"] else "0", f"{f['r2']:.4f}", f"{f['ratio_last_over_first']:.2f}x",
                     f["target"], "PASS" if f["passed"] else "FAIL"])
    print_grid(header, rows, title="KV cache memory after prompt + decode: bytes(L) = a + b*L", left=(0, 6, 7))


# -- adaptive depth: what stopping computes --------------------------------------------
@dataclass(frozen=True)
class ComputeConfig:
    """A compute-bound shape for the adaptive-depth measurements (see the module docstring)."""

    hidden_size: int
    num_attention_heads: int
    num_core_layers: int
    vocab_size: int
    max_loops: int
    requests: int
    prompt_tokens: int
    new_tokens: int
    reps: int
    exit_threshold: float

    @classmethod
    def for_mode(cls, quick: bool) -> ComputeConfig:
        if quick:
            return cls(hidden_size=64, num_attention_heads=4, num_core_layers=2, vocab_size=256, max_loops=4,
                       requests=4, prompt_tokens=16, new_tokens=4, reps=1, exit_threshold=0.5)
        return cls(hidden_size=512, num_attention_heads=8, num_core_layers=4, vocab_size=512, max_loops=8,
                   requests=32, prompt_tokens=128, new_tokens=32, reps=7, exit_threshold=0.5)


def build_gated_model(cc: ComputeConfig) -> Any:
    import torch

    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM

    conf = LoopedConfig(vocab_size=cc.vocab_size, hidden_size=cc.hidden_size,
                        num_attention_heads=cc.num_attention_heads, num_prelude_layers=1,
                        num_core_layers=cc.num_core_layers, num_coda_layers=1, default_loops=1,
                        max_loops=cc.max_loops, exit_gate=True, pad_token_id=0)
    torch.manual_seed(0)
    model = LoopedForCausalLM(conf).eval()
    with torch.no_grad():
        # The gate reads the normalized state (RMS 1 per feature): weights of std 1/sqrt(d)
        # give every token a logit of std ~1 that changes from loop to loop, so tokens
        # reach the threshold at different loops; the bias is calibrated below.
        model.model.exit_gate.weight.normal_(0, 1 / cc.hidden_size**0.5, generator=torch.Generator().manual_seed(1))
    return model


def calibrate_gate(model: Any, ids: Any, cc: ComputeConfig) -> dict[str, float]:
    """Set the exit gate's bias (bisection) so that the mean depth is about half of ``max_loops``."""
    import torch

    lo, hi = -8.0, 8.0
    target = cc.max_loops / 2
    mean = float("nan")
    with torch.inference_mode():
        for _ in range(12):
            bias = (lo + hi) / 2
            model.model.exit_gate.bias.fill_(bias)
            mean = float(model(ids, loops=cc.max_loops, exit_threshold=cc.exit_threshold).exit_steps.float().mean())
            if mean > target:  # too deep: exit sooner
                lo = bias
            else:
                hi = bias
    return {"bias": float(model.model.exit_gate.bias.detach()), "calibration_mean_depth": mean}


def generate_counted(model: Any, ids: Any, budgets: list[int], new_tokens: int,
                     exit_threshold: float | None) -> dict[str, Any]:
    """What the hf backend does for one batch: a prefill with per-row budgets, then cached
    greedy decoding (the last token is not fed); counts the core rows with hooks."""
    import torch

    rows = [0]

    def count(module: Any, args: Any, output: Any) -> None:
        rows[0] += args[0].numel() // args[0].shape[-1]

    hooks = [layer.register_forward_hook(count) for layer in model.model.core]
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(ids, loops=budgets, exit_threshold=exit_threshold, use_cache=True)
            reported, depth_sum, tokens = out.core_tokens.clone(), int(out.exit_steps.sum()), ids.numel()
            for _ in range(new_tokens - 1):
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
                out = model(tok, cache=out.cache, loops=budgets, exit_threshold=exit_threshold, use_cache=True)
                reported += out.core_tokens
                depth_sum += int(out.exit_steps.sum())
                tokens += tok.numel()
            wall = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    layers = len(model.model.core)
    return {"wall_s": wall, "counted_loop_tokens": rows[0] // layers, "reported_loop_tokens": int(reported.sum()),
            "depth_sum": depth_sum, "tokens": tokens, "mean_loops": depth_sum / tokens}


def measure_adaptive(cc: ComputeConfig) -> dict[str, Any]:
    import torch

    model = build_gated_model(cc)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, cc.vocab_size, (cc.requests, cc.prompt_tokens), generator=gen)
    gate = calibrate_gate(model, ids[: max(1, cc.requests // 8), : max(8, cc.prompt_tokens // 2)], cc)
    mixed = [1 + i % cc.max_loops for i in range(cc.requests)]
    runs = {
        "all_max": (lambda: generate_counted(model, ids, [cc.max_loops] * cc.requests, cc.new_tokens, None)),
        "mixed": (lambda: generate_counted(model, ids, mixed, cc.new_tokens, None)),
        "gated": (lambda: generate_counted(model, ids, [cc.max_loops] * cc.requests, cc.new_tokens,
                                           cc.exit_threshold)),
    }
    generate_counted(model, ids[:2, :8], [cc.max_loops] * 2, 2, cc.exit_threshold)  # warm-up
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    for _ in range(cc.reps):  # interleaved, so drift and other processes hit every run alike
        for name, fn in runs.items():
            gc.collect()
            samples[name].append(fn())
    res: dict[str, Any] = {"budgets_mixed": mixed, "gate": {"exit_threshold": cc.exit_threshold, **gate}}
    for name, runs_ in samples.items():
        walls = [r["wall_s"] for r in runs_]
        first = runs_[0]
        res[name] = {"wall_s_min": min(walls), "wall_s_median": median(walls), "samples_s": walls,
                     **{k: first[k] for k in ("counted_loop_tokens", "reported_loop_tokens", "tokens",
                                              "mean_loops")},
                     "counts_equal": all(r["counted_loop_tokens"] == r["reported_loop_tokens"] == r["depth_sum"]
                                         for r in runs_)}
    base = res["all_max"]["wall_s_min"]
    mixed_ratio = res["mixed"]["wall_s_min"] / base
    gated_ratio = res["gated"]["wall_s_min"] / base
    depth_ratio = res["gated"]["mean_loops"] / cc.max_loops
    res["targets"] = {
        "mixed": {"ratio": mixed_ratio, "ideal": res["mixed"]["mean_loops"] / cc.max_loops,
                  "target": "wall(mixed 1..L) / wall(all L) <= 0.70", "passed": mixed_ratio <= 0.70},
        "gated": {"ratio": gated_ratio, "mean_loops_over_max": depth_ratio,
                  "target": "wall(gated) / wall(all L) <= mean loops / L + 0.15",
                  "passed": gated_ratio <= depth_ratio + 0.15},
        "counts": {"target": "counted core loop-tokens == reported (every run)",
                   "passed": all(res[k]["counts_equal"] for k in runs)},
    }
    return res


def print_adaptive(res: dict[str, Any], cc: ComputeConfig) -> None:
    print()
    header = ["run", "budgets", "mean loops", "wall min (s)", "wall median (s)", "vs all L", "counted loop-tok",
              "reported loop-tok"]
    base = res["all_max"]["wall_s_min"]
    what = {"all_max": f"all {cc.max_loops}", "mixed": f"1..{cc.max_loops} mixed",
            "gated": f"all {cc.max_loops}, gate {cc.exit_threshold}"}
    rows = [[name, what[name], f"{r['mean_loops']:.2f}", f"{r['wall_s_min']:.3f}", f"{r['wall_s_median']:.3f}",
             f"{r['wall_s_min'] / base:.3f}", str(r["counted_loop_tokens"]), str(r["reported_loop_tokens"])]
            for name, r in ((k, res[k]) for k in ("all_max", "mixed", "gated"))]
    print_grid(header, rows, title=(f"adaptive depth ({cc.requests} requests x {cc.prompt_tokens} prompt tokens, "
                                    f"{cc.new_tokens} new; hidden {cc.hidden_size}, {cc.num_core_layers} core layers, "
                                    f"{cc.num_attention_heads} heads; min of {cc.reps})"), left=(0, 1))
    print()
    t = res["targets"]
    rows = [["mixed / all", f"{t['mixed']['ratio']:.3f}", f"ideal {t['mixed']['ideal']:.3f}", t["mixed"]["target"],
             "PASS" if t["mixed"]["passed"] else "FAIL"],
            ["gated / all", f"{t['gated']['ratio']:.3f}", f"depth {t['gated']['mean_loops_over_max']:.3f}",
             t["gated"]["target"], "PASS" if t["gated"]["passed"] else "FAIL"],
            ["counts", "-", "-", t["counts"]["target"], "PASS" if t["counts"]["passed"] else "FAIL"]]
    print_grid(["metric", "ratio", "reference", "target", "pass"], rows, title="adaptive depth targets",
               left=(0, 3, 4))

# -- driver ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="loops 1, 2, 4, small shapes, 1 repeat (smoke test)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config.for_mode(args.quick, args.threads)
    mode = "quick" if args.quick else "full"
    wall0 = time.perf_counter()

    import torch

    torch.set_num_threads(cfg.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_start is not None and load_start > 0.5:
        log(f"note: the machine is busy (1-minute load average {load_start:.2f}); timings will be noisy.")

    models = build_models(cfg)
    n_params = sum(p.numel() for p in models["per_loop"].parameters())
    ours = run_steps("looped", {m: (lambda m=m: measure_mode(models[m], cfg, m)) for m in MODES})
    cc = ComputeConfig.for_mode(args.quick)
    adaptive = run_steps("looped", {"adaptive": lambda: measure_adaptive(cc)})["adaptive"]
    fits: dict[str, Any] = {}
    for m in MODES:
        if "error" not in ours[m]:
            try:
                fits[m] = fit_mode(ours[m], cfg, m)
            except Exception as e:  # e.g. a zero time: report it, keep the other mode
                fits[m] = {"error": f"{type(e).__name__}: {e}"}
                log(f"[looped] fit {m}: FAILED {type(e).__name__}: {e}")

    print_tables(ours, fits, cfg, mode)
    if "error" not in adaptive:
        print_adaptive(adaptive, cc)
    c = models["per_loop"].config
    lo, hi = cfg.loops[0], cfg.loops[-1]
    notes = [
        f"model: random LoopedForCausalLM, {n_params / 1e6:.2f} M params, hidden {c.hidden_size}, "
        f"{c.num_attention_heads} heads, intermediate {c.intermediate_size}, vocab {c.vocab_size}, "
        f"prelude {c.num_prelude_layers} / core {c.num_core_layers} / coda {c.num_coda_layers}, "
        f"injection {c.injection}, fp32 on CPU, torch {torch.__version__}, {cfg.threads} threads.",
        f"prefill: one forward of {cfg.batch} x {cfg.prefill_tokens} tokens with use_cache=True. The shared cache "
        f"runs positions one at a time (exact shared-cache semantics), so its prefill is a loop of single-position "
        f"forwards and runs at about decode speed; to bound the run time it is measured on a shorter prompt, "
        f"{cfg.batch} x {cfg.shared_prefill_tokens} tokens (per-token times still compare: each position is its "
        "own forward).",
        f"decode: {cfg.new_tokens} cached single-token greedy steps for batch {cfg.batch} after a "
        f"{cfg.prompt_tokens}-token prompt (the prompt's prefill untimed); per token = time / ({cfg.batch} x "
        f"{cfg.new_tokens}). KV = LoopedCache.nbytes() after the prompt and the decode steps "
        f"({cfg.prompt_tokens + cfg.new_tokens} positions).",
        f"medians of {cfg.reps} repeats after {cfg.warmup_rounds} warm-up round(s); each repeat runs every L in turn. "
        "a = loop-independent cost per token (embeddings, prelude, coda, head, Python), b = one loop of the core; "
        f"a/b (in the JSON) is the fixed cost in loops: t({hi})/t({lo}) = (a + {hi}b)/(a + {lo}b), below {hi // lo} "
        "when a > 0.",
    ]
    for m in MODES:
        gc_ = ours[m].get("generate_check") if "error" not in ours[m] else None
        if gc_ is not None:
            verdict = "match" if gc_["matches"] else "DO NOT match"
            notes.append(f"{m}: greedy loop tokens {verdict} model.generate(do_sample=False) at loops={gc_['loops']}.")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = [x for x in (load_start, load_end) if x is not None and x > 0.5]
    if busy:
        notes.append(f"the machine was busy (1-minute load average {load_start:.2f} at the start, {load_end:.2f} at "
                     f"the end, {os.cpu_count()} CPUs): other processes compete with torch's {cfg.threads} threads, "
                     "so the timings (not the KV bytes) are unreliable; rerun on an idle machine.")
    notes.append(
        f"adaptive depth: a random gated model (hidden {cc.hidden_size}, {cc.num_attention_heads} heads, "
        f"prelude 1 / core {cc.num_core_layers} / coda 1, max_loops {cc.max_loops}); {cc.requests} requests x "
        f"{cc.prompt_tokens} prompt tokens, {cc.new_tokens} new tokens: one batched prefill with per-row budgets and "
        f"cached greedy decoding, as the hf backend runs it. 'mixed' gives the rows budgets 1..{cc.max_loops} in one "
        f"batch; 'gated' runs all rows at {cc.max_loops} with exit_threshold={cc.exit_threshold}; the gate's weights "
        "are normal with std 1/sqrt(hidden) and its bias is set by bisection so that the mean depth on a slice of "
        "the prompts is about half of max_loops. Counted loop-tokens: rows seen by forward hooks on the core layers "
        "/ core layers; reported: the model's core_tokens. Walls are minima over the interleaved repeats (the "
        "machine may be shared).")
    for note in notes:
        print("note: " + note)

    targets = [
        {"cache": m, "metric": k, "target": f.get("target"), "passed": f.get("passed", False)}
        for m in MODES
        for k, f in (fits.get(m) or {"all": {"target": None, "passed": False}}).items()
        if isinstance(f, dict)
    ]
    if "error" not in adaptive:
        targets += [{"cache": "adaptive", "metric": k, "target": v["target"], "passed": v["passed"]}
                    for k, v in adaptive["targets"].items()]
    else:
        targets.append({"cache": "adaptive", "metric": "all", "target": None, "passed": False})
    elapsed = time.perf_counter() - wall0
    machine = machine_info(["loopagent", "torch", "transformers"])
    machine["torch_threads"] = torch.get_num_threads()
    data = {
        "benchmark": "looped",
        "mode": mode,
        "machine": machine,
        "config": {**asdict(cfg), "intermediate_size": c.intermediate_size, "params": n_params},
        "loopagent": ours,
        "adaptive": {"config": asdict(cc), **adaptive},
        "fits": fits,
        "targets": targets,
        "notes": notes,
        "load_avg_1min": {"start": load_start, "end": load_end},
        "elapsed_s": elapsed,
    }
    path = write_json(args.out, data)
    print(f"results: {path}  ({elapsed:.1f} s; torch {package_version('torch')}, "
          f"transformers {package_version('transformers')})")

    failed = [k for k, v in ours.items() if isinstance(v, dict) and "error" in v]
    failed += ["adaptive"] if "error" in adaptive else []
    failed += [f"fit {k}" for k, v in fits.items() if "error" in v]
    if failed:
        log(f"looped measurements failed: {', '.join(failed)}")
        return 1
    if args.strict and not all(t["passed"] for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
