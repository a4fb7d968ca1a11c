#!/usr/bin/env python
"""GPU benchmark of the loop-step kernels (``loopagent.backends.kernels``) and of decoding.

Run on a CUDA machine from the repository root (torch, Triton and transformers; vLLM is not
needed), one short script of a few minutes on an H200-class GPU::

    python bench/kernels.py                # full run, writes bench/results/kernels.json
    python bench/kernels.py --quick        # CPU smoke test: tiny shapes, interpreted kernels
    python bench/kernels.py --out /tmp/k.json

1. **Kernels**: each Triton kernel against its plain-torch reference run eagerly and under
   ``torch.compile`` (the same reference function), on decode-sized rows (32 x hidden) and
   prefill-sized rows (4096 x hidden); microseconds per call (CUDA events, median of repeats).
2. **Loop-step chain**: everything one loop of a core layer does besides its matmuls and
   attention, in order: injection + pre-norm, residual add + post-attention norm, SwiGLU,
   residual add + the next norm, the exit gate's halting update. Fused (the kernels) vs eager
   vs ``torch.compile`` of the eager chain. Target: fused >= 1.5x eager.
3. **Decode**: a ~100M-parameter looped model (hidden 768, 12 heads, SwiGLU 2048, prelude 2 /
   core 4 / coda 2, vocabulary 32000, bfloat16) decodes 32 greedy tokens after a 64-token
   prompt at loops 1, 4, 8, 16 and batch 1 and 32, as:
   ``eager`` (kernels off, dynamic cache), ``kernels`` (kernels on), ``graphs`` (the static
   decode step, ``GraphDecoder``, replayed as a CUDA graph, kernels off), ``kernels+graphs``,
   ``compile`` (``torch.compile`` of the same static step, kernels off, no graphs) and
   ``compile+graphs`` (compiled and replayed as a graph; the two compile variants at batch 1
   and loops 1 and 8 only, where their target is, to keep the run short). Tokens/s, and the
   per-loop cost (slope of seconds per step over loops: one loop step with its matmuls and
   attention). Every variant's tokens are checked against eager (greedy, bfloat16: a
   mismatch is reported, not fatal, since rounding differs). Targets: kernels+graphs >= 1.3x
   eager at batch 1, and no slower than the better of compile and compile+graphs.

Everything is written as JSON with the GPU's name and the date (default
bench/results/kernels.json). A missed target does not change the exit status (``--strict``
does); a measurement that fails does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, log, machine_info, print_grid, write_json

ROOT = Path(__file__).resolve().parents[1]


def _importable() -> None:
    """Make ``loopagent.backends`` importable from a bare checkout (the GPU machine has torch,
    Triton and transformers, and neither loopagent installed nor the controller's packages):
    the sibling folders are subpackages of ``loopagent`` (pyproject's package-dir), and
    ``loopagent`` itself loads its controller only on first use."""
    import importlib.util

    sys.path.insert(0, str(ROOT))
    import loopagent

    if importlib.util.find_spec("loopagent.backends") is None:
        loopagent.__path__.append(str(ROOT))


_importable()


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_us(fn: Callable[[], Any], device: Any, repeats: int, inner: int) -> float:
    """Median microseconds per call over ``repeats`` timings of ``inner`` back-to-back calls."""
    import torch

    fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e6 / inner)
    return statistics.median(samples)


def _compiled(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any] | None:
    import torch

    if not enabled:
        return None
    return torch.compile(fn, dynamic=False)


# -- 1. kernels ---------------------------------------------------------------------------------


def bench_kernels(cfg: dict[str, Any], device: Any, dtype: Any) -> list[dict[str, Any]]:
    return [entry for rows in cfg["rows"] for entry in _bench_kernels_at(rows, cfg, device, dtype)]


def _bench_kernels_at(rows: int, cfg: dict[str, Any], device: Any, dtype: Any) -> list[dict[str, Any]]:
    import torch

    from loopagent.backends import kernels as K

    d, f, eps = cfg["hidden"], cfg["intermediate"], 1e-6
    rows_out = []
    g = torch.Generator(device="cpu").manual_seed(rows)

    def rand(*shape: int, _g: torch.Generator = g) -> torch.Tensor:
        return torch.randn(*shape, generator=_g).to(device=device, dtype=dtype)

    x, delta, w, w2 = rand(rows, d), rand(rows, d), rand(d), rand(d)
    gate, up = rand(rows, f), rand(rows, f)
    decay = torch.rand(d, generator=g).to(device=device, dtype=dtype)
    gw, gb = rand(d) / d**0.5, rand(())
    cdf = torch.zeros(rows, device=device)
    survive = torch.ones(rows, device=device)
    budget = torch.full((rows,), 8, device=device, dtype=torch.long)
    cases: dict[str, tuple[Callable[[], Any], Callable[..., Any], tuple[Any, ...]]] = {
        "rms_norm": (lambda: K.rms_norm(x, w, eps), K.rms_norm_ref, (x, w, eps)),
        "add_rms_norm": (lambda: K.add_rms_norm(x, delta, w, eps), K.add_rms_norm_ref, (x, delta, w, eps)),
        "add_rms_norm (sandwich)": (lambda: K.add_rms_norm(x, delta, w, eps, w2),
                                    K.add_rms_norm_ref, (x, delta, w, eps, w2)),
        "inject_rms_norm (stable)": (lambda: K.inject_rms_norm(x, delta, w, eps, decay),
                                     K.inject_rms_norm_ref, (x, delta, w, eps, decay)),
        "silu_mul": (lambda: K.silu_mul(gate, up), K.silu_mul_ref, (gate, up)),
        "halt_step": (lambda: K.halt_step(x, gw, gb, cdf, survive, budget, 2, 1, 0.9, norm_weight=w, eps=eps),
                      lambda *a: K.halt_step_ref(*a, norm_weight=w, eps=eps),
                      (x, gw, gb, cdf, survive, budget, 2, 1, 0.9)),
    }
    for name, (fused, ref, args) in cases.items():
        entry: dict[str, Any] = {"kernel": name, "rows": rows, "hidden": d}
        try:
            entry["fused_us"] = time_us(fused, device, cfg["repeats"], cfg["inner"])
            entry["eager_us"] = time_us(lambda _r=ref, _a=args: _r(*_a), device, cfg["repeats"], cfg["inner"])
            comp = _compiled(ref, cfg["compile"])
            entry["compile_us"] = (time_us(lambda _c=comp, _a=args: _c(*_a), device, cfg["repeats"], cfg["inner"])
                                   if comp is not None else None)
        except Exception as e:  # one failure is a result, not the end of the run
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
        rows_out.append(entry)
    return rows_out


# -- 2. the loop-step chain -----------------------------------------------------------------------


def bench_chain(cfg: dict[str, Any], device: Any, dtype: Any) -> list[dict[str, Any]]:
    """One core layer's loop step without its matmuls: see the module docstring (2)."""
    return [_bench_chain_at(rows, cfg, device, dtype) for rows in cfg["rows"]]


def _bench_chain_at(rows: int, cfg: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    from loopagent.backends import kernels as K

    d, f, eps = cfg["hidden"], cfg["intermediate"], 1e-6
    g = torch.Generator(device="cpu").manual_seed(7 + rows)

    def rand(*shape: int, _g: torch.Generator = g) -> torch.Tensor:
        return torch.randn(*shape, generator=_g).to(device=device, dtype=dtype)

    s, c, attn, mlp_out = rand(rows, d), rand(rows, d), rand(rows, d), rand(rows, d)
    gate, up = rand(rows, f), rand(rows, f)
    w1, w2, w3, final = rand(d), rand(d), rand(d), rand(d)
    decay = torch.rand(d, generator=g).to(device=device, dtype=dtype)
    gw, gb = rand(d) / d**0.5, rand(())
    cdf, survive = torch.zeros(rows, device=device), torch.ones(rows, device=device)
    budget = torch.full((rows,), 8, device=device, dtype=torch.long)

    def chain(suffix: str) -> Callable[[], Any]:
        """The step through the kernels (``""``) or their torch references (``"_ref"``)."""
        inject, add, silu_mul, halt = (getattr(K, name + suffix)
                                       for name in ("inject_rms_norm", "add_rms_norm", "silu_mul", "halt_step"))

        def step() -> Any:
            h, n = inject(s, c, w1, eps, decay)
            h, n = add(h, attn, w2, eps)
            act = silu_mul(gate, up)
            h, n = add(h, mlp_out, w3, eps)
            return halt(h, gw, gb, cdf, survive, budget, 2, 1, 0.9, norm_weight=final, eps=eps), act, n

        return step

    fused, eager = chain(""), chain("_ref")

    entry: dict[str, Any] = {"rows": rows, "hidden": d}
    try:
        entry["fused_us"] = time_us(fused, device, cfg["repeats"], cfg["inner"])
        entry["eager_us"] = time_us(eager, device, cfg["repeats"], cfg["inner"])
        comp = _compiled(eager, cfg["compile"])
        entry["compile_us"] = time_us(comp, device, cfg["repeats"], cfg["inner"]) if comp is not None else None
        entry["speedup_vs_eager"] = entry["eager_us"] / entry["fused_us"]
    except Exception as e:
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc()
    return entry


# -- 3. decode ----------------------------------------------------------------------------------------


def _model(cfg: dict[str, Any], device: Any, dtype: Any) -> Any:
    import torch

    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM

    torch.manual_seed(0)
    m = cfg["model"]
    config = LoopedConfig(vocab_size=m["vocab"], hidden_size=m["hidden"], num_attention_heads=m["heads"],
                          intermediate_size=m["intermediate"], num_prelude_layers=m["prelude"],
                          num_core_layers=m["core"], num_coda_layers=m["coda"], max_loops=max(cfg["loops"]),
                          default_loops=1, injection="stable", max_position_embeddings=4096)
    return LoopedForCausalLM(config).to(device=device, dtype=dtype).eval()


def _eager_decode(model: Any, ids: Any, loops: int, new: int) -> tuple[Any, float]:
    """Greedy cached decoding as the hf backend runs it; returns the tokens and the seconds of the
    ``new - 1`` decode steps (the prefill is not timed)."""
    import torch

    with torch.no_grad():
        out = model(ids, loops=loops, use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        _sync(ids.device)
        t0 = time.perf_counter()
        for _ in range(new - 1):
            out = model(tokens[-1], cache=out.cache, loops=loops, use_cache=True)
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
        _sync(ids.device)
        return torch.cat(tokens, 1), time.perf_counter() - t0


def _graph_decode(model: Any, ids: Any, loops: int, new: int, capture: bool, compile_step: bool) -> tuple[Any, float]:
    """The static decode step (``GraphDecoder``), replayed as a CUDA graph with ``capture``;
    returns the tokens and the seconds of the ``new - 1`` decode steps."""
    import torch

    from loopagent.backends.looped import GraphDecoder

    decoder = GraphDecoder(model, loops=loops, max_len=ids.shape[1] + new + 1, buckets=(ids.shape[0],),
                           capture=capture, compile=compile_step)
    with torch.no_grad():
        logits = decoder.prefill(ids)
        decoder.step(logits.argmax(-1))  # capture / compile outside the timing
        logits = decoder.prefill(ids)
        tokens = [logits.argmax(-1)]
        _sync(ids.device)
        t0 = time.perf_counter()
        for _ in range(new - 1):
            logits = decoder.step(tokens[-1])
            tokens.append(logits.argmax(-1))
        _sync(ids.device)
        return torch.stack(tokens, 1), time.perf_counter() - t0


VARIANTS = ("eager", "kernels", "graphs", "kernels+graphs", "compile", "compile+graphs")


def bench_decode(cfg: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    from loopagent.backends import kernels

    model = _model(cfg, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    new, prompt = cfg["new_tokens"], cfg["prompt"]
    runs: list[dict[str, Any]] = []
    for batch in cfg["batches"]:
        ids = torch.randint(0, cfg["model"]["vocab"], (batch, prompt), generator=torch.Generator().manual_seed(batch))
        ids = ids.to(device)
        for loops in cfg["loops"]:
            reference = None
            for variant in cfg["variants"]:
                if variant.startswith("compile") and (batch != 1 or loops not in cfg["compile_loops"]):
                    continue  # compiling a 16-loop step takes minutes: only where the target is (batch 1)
                entry: dict[str, Any] = {"variant": variant, "batch": batch, "loops": loops}
                try:
                    mode = "on" if variant.startswith("kernels") else "off"
                    with kernels.mode(mode):
                        if variant in ("eager", "kernels"):
                            _eager_decode(model, ids, loops, 2)  # warm-up (Triton compiles here)
                            tokens, wall = _eager_decode(model, ids, loops, new)
                        else:
                            if variant.startswith("compile"):
                                # a fresh compilation per configuration: dynamo's recompile limit would
                                # otherwise fall back to eager silently after a few
                                torch._dynamo.reset()
                            graphs = variant.endswith("graphs") and device.type == "cuda"
                            tokens, wall = _graph_decode(model, ids, loops, new, capture=graphs,
                                                         compile_step=variant.startswith("compile"))
                    steps = new - 1
                    entry.update(step_ms=wall * 1e3 / steps, tokens_per_s=batch * steps / wall)
                    if reference is None:
                        reference = tokens
                    entry["tokens_match_eager"] = bool(torch.equal(tokens.cpu(), reference.cpu()))
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {e}"
                    entry["traceback"] = traceback.format_exc()
                runs.append(entry)
                log(f"decode batch={batch} loops={loops} {variant}: "
                    f"{entry.get('tokens_per_s', entry.get('error'))}")
    return {"params": params, "runs": runs, "per_loop_ms": _per_loop(runs, cfg)}


def _per_loop(runs: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """The slope of step time over loops (ms per loop step) per (variant, batch), least squares."""
    out: dict[str, Any] = {}
    for variant in cfg["variants"]:
        for batch in cfg["batches"]:
            pts = [(r["loops"], r["step_ms"]) for r in runs
                   if r["variant"] == variant and r["batch"] == batch and "step_ms" in r]
            if len(pts) >= 2:
                xs, ys = zip(*pts)
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
                out[f"{variant}/batch{batch}"] = slope
    return out


def _lookup(runs: list[dict[str, Any]], variant: str, batch: int, loops: int) -> float | None:
    for r in runs:
        if (r["variant"], r["batch"], r["loops"]) == (variant, batch, loops) and "tokens_per_s" in r:
            return r["tokens_per_s"]
    return None


def targets(data: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    chain = [c for c in data["chain"] if "speedup_vs_eager" in c]
    if chain:
        worst = min(c["speedup_vs_eager"] for c in chain)
        out.append({"metric": "fused loop-step chain vs eager (worst rows)", "value": worst, "target": ">= 1.5",
                    "passed": worst >= 1.5})
    runs = data["decode"]["runs"]
    ratios, vs_compile = [], []
    for loops in cfg["loops"]:
        best, eager = _lookup(runs, "kernels+graphs", 1, loops), _lookup(runs, "eager", 1, loops)
        compiled = [c for c in (_lookup(runs, v, 1, loops) for v in ("compile", "compile+graphs")) if c]
        if best and eager:
            ratios.append(best / eager)
        if best and compiled:
            vs_compile.append(best / max(compiled))  # against the better of the two compiled variants
    if ratios:
        out.append({"metric": "decode batch 1: kernels+graphs vs eager (worst loops)", "value": min(ratios),
                    "target": ">= 1.3", "passed": min(ratios) >= 1.3})
    if vs_compile:
        out.append({"metric": "decode batch 1: kernels+graphs vs best of compile, compile+graphs (worst loops)",
                    "value": min(vs_compile),
                    "target": ">= 1.0", "passed": min(vs_compile) >= 1.0})
    return out


def config(quick: bool, device: Any) -> dict[str, Any]:
    gpu = device.type == "cuda"
    if quick:  # the CPU smoke test: the kernels run in Triton's interpreter
        return {"hidden": 32, "intermediate": 64, "rows": [4], "repeats": 1, "inner": 1, "compile": False,
                "model": dict(vocab=64, hidden=32, heads=2, intermediate=64, prelude=1, core=1, coda=1),
                "loops": [1, 2], "compile_loops": [], "batches": [1, 2], "prompt": 6, "new_tokens": 3,
                "variants": ["eager", "kernels", "graphs"]}
    return {"hidden": 768, "intermediate": 2048, "rows": [32, 4096], "repeats": 5, "inner": 100, "compile": gpu,
            "model": dict(vocab=32000, hidden=768, heads=12, intermediate=2048, prelude=2, core=4, coda=2),
            "loops": [1, 4, 8, 16], "compile_loops": [1, 8], "batches": [1, 32], "prompt": 64, "new_tokens": 32,
            "variants": list(VARIANTS) if gpu else ["eager", "kernels", "graphs"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny shapes, one repeat")
    parser.add_argument("--out", default=str(RESULTS_DIR / "kernels.json"))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    import torch

    from loopagent.backends import kernels

    if not kernels.available():
        log("Triton is not installed: pip install -e '.[kernels]'")
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        log("no CUDA device: the full run measures GPU kernels; use --quick for the CPU smoke test")
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = config(args.quick, device)
    machine = machine_info(["torch", "triton", "transformers"])
    machine["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    with torch.no_grad(), kernels.mode("on"):
        data: dict[str, Any] = {"machine": machine, "config": cfg, "dtype": str(dtype).removeprefix("torch."),
                                "kernels": bench_kernels(cfg, device, dtype), "chain": bench_chain(cfg, device, dtype)}
    data["decode"] = bench_decode(cfg, device, dtype)
    # Speed targets are for the GPU: on the CPU the kernels run in Triton's interpreter.
    data["targets"] = targets(data, cfg) if device.type == "cuda" else []
    if device.type != "cuda":
        data["note"] = "CPU smoke run: kernels interpreted, no graphs captured; the figures say nothing of speed"

    print_grid(["kernel", "rows", "fused us", "eager us", "compile us"],
               [[k["kernel"], k["rows"], _f(k.get("fused_us")), _f(k.get("eager_us")), _f(k.get("compile_us"))]
                for k in data["kernels"]], title="Kernels (median us per call)")
    print_grid(["rows", "fused us", "eager us", "compile us", "fused/eager"],
               [[c["rows"], _f(c.get("fused_us")), _f(c.get("eager_us")), _f(c.get("compile_us")),
                 _f(c.get("speedup_vs_eager"))] for c in data["chain"]], title="Loop-step chain (no matmuls)")
    print_grid(["batch", "loops", *cfg["variants"]],
               [[b, n, *[_f(_lookup(data["decode"]["runs"], v, b, n)) for v in cfg["variants"]]]
                for b in cfg["batches"] for n in cfg["loops"]], title="Decode tokens/s")
    print_grid(["target", "value", "wanted", "passed"],
               [[t["metric"], _f(t["value"]), t["target"], t["passed"]] for t in data["targets"]], title="Targets")
    out = write_json(args.out, data)
    print(f"results: {out}")
    failed = [e for e in data["kernels"] + data["chain"] + data["decode"]["runs"] if "error" in e]
    for e in failed:
        log(f"failed: {e}\n")
    if failed:
        return 1
    if args.strict and not all(t["passed"] for t in data["targets"]):
        return 1
    return 0


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
