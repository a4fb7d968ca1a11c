"""The viewer without a browser: loading, page data, escaping, the CLI, the follow server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from loopagent.cli import app
from loopagent.trajectory import RootTurn, TrajectoryWriter, read_trajectory
from loopagent.view import FollowServer, ViewError, load_log, write_index
from loopagent.view.highlight import tokens
from loopagent.view.load import Log, LogReader
from loopagent.view.model import page_data
from loopagent.view.page import embed_json
from loopagent.view.render import run_html

runner = CliRunner()


def _data(html: str) -> dict:
    raw = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1)
    return json.loads(raw)


def _nodes(node: dict, kind: str) -> list[dict]:
    found = [node] if node["k"] == kind else []
    for kid in node.get("kids", []):
        found += _nodes(kid, kind)
    return found


# -- escaping ---------------------------------------------------------------------------------------
def test_embedded_json_cannot_close_the_script_and_round_trips(helpers) -> None:
    text = helpers.injection + " & \u2028 \u2029 <!-- -->"
    raw = embed_json({"t": text})
    assert not set("<>&\u2028\u2029") & set(raw)
    assert json.loads(raw) == {"t": text}


def test_a_page_holds_model_text_only_inside_its_json(real_run) -> None:
    path, _ = real_run
    html = run_html(load_log(path))
    assert html.count("<script") == 2 and html.count("</script>") == 2  # the data and the viewer, nothing else
    assert "pwned" in html and "<img" not in html
    assert "script-src 'sha256-" in html and "unsafe-inline'; connect" not in html  # only our script may run
    assert not re.search(r"https?://", html.replace("http://www.w3.org", ""))  # nothing fetched from anywhere


def test_highlighting_keeps_the_code_exactly() -> None:
    code = "def f(x):\n    return len(x) + 1  # note\nprint('</script>')\n"
    toks = tokens(code)
    assert "".join(t for _, t in toks) == code
    assert ["k", "def"] in toks and ["nb", "len"] in toks and ["c", "# note"] in toks


# -- page data from a real run --------------------------------------------------------------------------
def test_tree_nests_the_child_run_under_its_rlm_query(real_run) -> None:
    path, _ = real_run
    data = page_data(load_log(path))
    (top,) = data["runs"]
    assert [k["k"] for k in top["kids"]] == ["turn", "turn", "turn", "final", "end"]
    calls = _nodes(top, "call")
    assert [c["kind"] for c in calls] == ["llm_batch"] * 3 + ["rlm_query", "llm_query"]
    assert calls[0]["hist"] and calls[4]["lr"] == 2 and calls[4]["lc"] == 2
    (child,) = calls[3]["kids"]
    assert child["k"] == "run" and child["depth"] == 1 and child["query"] == "Count the letters"
    execs = _nodes(top, "exec")
    assert execs[1]["error_type"] == "ZeroDivisionError"
    assert data["answer"] == "child said 4 and child@2" and data["done"] and not data["warnings"]


def test_usage_per_depth_and_model_matches_the_runs_own_totals(real_run) -> None:
    path, result = real_run
    usage = page_data(load_log(path))["usage"]
    for mine, theirs in [(usage["total"], result.usage.total)] + \
            [(usage["by_depth"][str(d)], t) for d, t in result.usage.by_depth.items()] + \
            [(usage["by_model"][m], t) for m, t in result.usage.by_model.items()]:
        assert mine["calls"] == theirs.calls
        assert mine["prompt_tokens"] == theirs.prompt_tokens and mine["loop_tokens"] == theirs.loop_tokens
        assert mine["usd"] == pytest.approx(theirs.usd) if theirs.usd else mine["usd"] is None


def test_timeline_overlaps_concurrent_batch_calls(real_run) -> None:
    path, _ = real_run
    tl = page_data(load_log(path))["timeline"]
    batch = [b for b in tl["bars"] if b["label"].startswith("llm_batch")]
    assert len(batch) == 3 and len({b["lane"] for b in batch}) == 3  # concurrent: one lane each
    assert max(b["s"] for b in batch) < min(b["e"] for b in batch)
    assert any(b["cat"] == "child" for b in tl["bars"])  # the rlm_query child run as a span
    split = tl["split"]
    assert split["root model"] + split["REPL"] <= tl["wall_s"] + 1e-6 and split["REPL"] > 0


def test_node_ids_stay_the_same_while_the_log_grows(real_run) -> None:
    path, _ = real_run
    events = read_trajectory(path)

    def ids(evs):
        out = set()
        for run in page_data(Log(path, evs))["runs"]:
            stack = [run]
            while stack:
                node = stack.pop()
                out.add(node["id"])
                stack += node.get("kids", [])
        return out

    before, after = ids(events[: len(events) // 2]), ids(events)
    stable = {i for i in before if "-x" not in i or "-calls" in i}  # a still-running cell's group is named anew
    assert {i for i in stable if not i.endswith("-calls")} <= after


# -- bad input -------------------------------------------------------------------------------------------
def test_a_torn_last_line_shows_everything_before_it_with_a_warning(real_run, tmp_path) -> None:
    path, _ = real_run
    lines = path.read_text().splitlines()
    torn = tmp_path / "torn.jsonl"
    torn.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    log = load_log(torn)
    assert len(log.events) == len(lines) - 1 and "incomplete" in log.warnings[0]
    result = runner.invoke(app, ["view", str(torn), "-o", str(tmp_path / "t.html")])
    assert result.exit_code == 0 and "warning" in result.output
    assert "incomplete" in _data((tmp_path / "t.html").read_text())["run"]["warnings"][0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("# a readme\nnot json\n", "not a loopagent trajectory event"),
        ('{"v": 1, "type": "nonsense", "run_id": "x"}\n{"v": 1}\n', "not a loopagent trajectory event"),
        ("", "holds no loopagent trajectory events"),
    ],
)
def test_files_that_are_not_logs_fail_with_a_clear_message(tmp_path, content, message) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(ViewError, match=message):
        load_log(bad)
    result = runner.invoke(app, ["view", str(bad)])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_a_newer_schema_is_refused_with_exit_2(real_run, tmp_path) -> None:
    path, _ = real_run
    newer = tmp_path / "v2.jsonl"
    newer.write_text(path.read_text().replace('"v":1,', '"v":2,'))
    result = runner.invoke(app, ["view", str(newer)])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "schema v2" in said and "upgrade loopagent" in said
    for args in (["view", str(tmp_path / "missing.jsonl")], ["view", str(tmp_path)],
                 ["view", "--follow", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "error" in result.output, args


# -- the CLI writes pages ----------------------------------------------------------------------------------
def test_cli_writes_a_run_page_and_a_comparison(real_run, tmp_path) -> None:
    path, _ = real_run
    result = runner.invoke(app, ["view", str(path), "-o", str(tmp_path / "one.html")])
    assert result.exit_code == 0, result.output
    assert _data((tmp_path / "one.html").read_text())["mode"] == "run"
    result = runner.invoke(app, ["view", str(path), str(path), "-o", str(tmp_path / "two.html")])
    assert result.exit_code == 0, result.output
    sides = _data((tmp_path / "two.html").read_text())["sides"]
    assert sides[0]["label"].startswith("A ·") and sides[0]["run"]["runs"][0]["id"].startswith("a-")


def test_an_eval_directory_gets_an_index_with_a_page_per_run(helpers, tmp_path) -> None:
    a, _ = helpers.make_run(tmp_path / "a", child_loops=2)
    b, _ = helpers.make_run(tmp_path / "b", child_loops=8)
    out = helpers.eval_dir(tmp_path, {"child2": a, "child8": b})
    result = runner.invoke(app, ["view", str(out)])
    assert result.exit_code == 0, result.output
    data = _data((out / "index.html").read_text())
    assert [r["config"] for r in data["rows"]] == ["child2", "child8"]
    assert all((out / r["href"]).is_file() for r in data["rows"])
    assert {c["config"]: c["score"] for c in data["configs"]} == {"child2": 0.5, "child8": 1.0}
    elsewhere = write_index(out, tmp_path / "pages" / "index.html")
    assert _data(elsewhere.read_text())["rows"][0]["href"] == "../eval/trajectories/child2/item-0.html"


# -- following a live log ------------------------------------------------------------------------------
def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_follow_server_sends_new_state_as_the_log_grows(real_run, tmp_path) -> None:
    path, _ = real_run
    lines = path.read_text().splitlines(keepends=True)
    live = tmp_path / "live.jsonl"
    live.write_text("".join(lines[:2]))
    with FollowServer(live, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        page = _get(server.url).decode()
        first = _data(page)
        assert first["follow"]["endpoint"] == "data" and first["run"]["events"] == 2
        offset = first["follow"]["offset"]
        assert json.loads(_get(f"{server.url}data?offset={offset}"))["run"] is None  # nothing new
        with open(live, "a") as f:
            f.write("".join(lines[2:5]) + lines[5][:10])  # and half a line still being written
        msg = json.loads(_get(f"{server.url}data?offset={offset}"))
        assert msg["offset"] > offset and msg["run"]["events"] == 5 and not msg["run"]["warnings"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"{server.url}other")
        url = server.url
    with pytest.raises(OSError):  # stopped: the port is closed again
        _get(url)
    assert not [t for t in threading.enumerate() if t.name == "loopagent-view"]


def test_reader_skips_a_bad_line_with_a_warning_and_keeps_going(tmp_path) -> None:
    log = tmp_path / "x.jsonl"
    w = TrajectoryWriter(log)
    w.write(RootTurn(run_id="r", iteration=0, prompt="p", completion="c", model="m"))
    reader = LogReader(log)
    assert len(reader.poll()) == 1 and reader.poll() == []
    with open(log, "a") as f:
        f.write("garbage\n")
    w.write(RootTurn(run_id="r", iteration=1, prompt="p", completion="c", model="m"))
    w.close()
    assert len(reader.poll()) == 1 and "skipped line 2" in reader.warnings[0]


def test_run_view_serves_the_new_runs_log_and_writes_its_page(helpers, tmp_path) -> None:
    replies = tmp_path / "root.json"
    replies.write_text(json.dumps([helpers.repl("print(len(context))"), helpers.repl("FINAL('done')")]))
    runs = tmp_path / "runs"
    started = time.monotonic()
    result = runner.invoke(app, ["run", "q", "--root", f"scripted:{replies}", "--log-dir", str(runs), "--view"])
    assert result.exit_code == 0, result.output
    assert "live view: http://127.0.0.1:" in result.output and "answer" in result.output
    (page,) = runs.glob("*.html")
    assert _data(page.read_text())["run"]["answer"] == "done"
    assert time.monotonic() - started < 30  # no page polled: the server does not wait for one
    assert not [t for t in threading.enumerate() if t.name == "loopagent-view"]


def test_watch_dir_waits_for_the_new_log(real_run, tmp_path) -> None:
    path, _ = real_run
    (tmp_path / "old.jsonl").write_text(path.read_text())
    server = FollowServer(watch_dir=tmp_path, port=0)
    assert server.data(-1)["run"]["events"] == 0 and server.log_path is None
    (tmp_path / "new.jsonl").write_text(path.read_text())
    assert server.data(-1)["run"]["done"] and server.log_path == tmp_path / "new.jsonl"


def test_follow_command_prints_its_url_and_stops_cleanly_on_sigterm(real_run) -> None:
    path, _ = real_run
    proc = subprocess.Popen([sys.executable, "-m", "loopagent.cli", "view", "--follow", str(path), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        assert json.loads(_get(url + "data?offset=0"))["run"]["done"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
