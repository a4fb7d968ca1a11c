"""Generated pages in a real browser (headless Chromium): the DOM after the page's script ran."""

from __future__ import annotations

import re

import pytest

from loopagent.view import FollowServer, write_index
from loopagent.view.render import write_compare_page, write_run_page

pytestmark = pytest.mark.slow


def count(dom: str, kind: str) -> int:
    return len(re.findall(rf'class="node k-{kind}[ "]', dom))


@pytest.fixture(scope="module")
def page(real_run, tmp_path_factory):
    return write_run_page(real_run[0], tmp_path_factory.mktemp("pages") / "run.html")


def test_run_page_draws_the_tree_collapsed_and_cannot_be_injected(browser, page, url_of) -> None:
    dom = browser.dom(url_of(page))
    assert count(dom, "run") == 1 and count(dom, "turn") == 3 and count(dom, "exec") == 3
    assert count(dom, "calls") == 3 and count(dom, "call") == 0  # calls are built on first expand
    assert "<title>loopagent · What is in the document?</title>" in dom  # not 'pwned' nor 'img'
    assert "<img" not in dom and dom.count("<script") == 2
    assert "&lt;/script&gt;&lt;script&gt;document.title='pwned'" in dom  # shown as text
    assert 'class="h-k">def' not in dom and 'class="h-nb">print</span>' in dom  # highlighted code
    assert "root model" in dom and "depth 1" in dom and 'class="bar c-call"' in dom  # usage and timeline


def test_expand_all_builds_calls_children_and_histograms(browser, page, url_of) -> None:
    dom = browser.dom(url_of(page) + "#expand=all")
    assert count(dom, "call") == 5 and count(dom, "run") == 2  # the rlm_query child run under its call
    assert 'class="hist"' in dom and "exit depth per token" in dom
    assert "asked 2 · loops 2" in dom  # llm_query(..., loops=2): requested and chosen


def test_a_3000_call_log_renders_lazily_and_searches(browser, helpers, tmp_path, url_of) -> None:
    log = tmp_path / "big.jsonl"
    helpers.write_big_log(log, 3000)
    url = url_of(write_run_page(log))
    dom = browser.dom(url)
    assert count(dom, "call") == 0 and "3,000 sub-calls" in dom
    dom = browser.dom(url + "#expand=big000000001-x0-calls")
    assert count(dom, "call") == 200 and "show 200 more (2,800 not shown)" in dom
    dom = browser.dom(url + "#q=section%20prompt%202999")
    assert count(dom, "call") == 1 and "1 matching node" in dom and "summary 2999" in dom


def test_compare_page_aligns_two_runs_by_turn(browser, helpers, tmp_path, url_of) -> None:
    a, _ = helpers.make_run(tmp_path / "a", child_loops=2)
    b, _ = helpers.make_run(tmp_path / "b", child_loops=8)
    dom = browser.dom(url_of(write_compare_page(a, b, tmp_path / "cmp.html")))
    assert dom.count('class="summary"') == 2 and dom.count('class="turn-row"') == 3
    assert "child child loops 2" in dom and "child child loops 8" in dom
    assert count(dom, "turn") == 6


def test_eval_index_lists_runs_and_links_their_pages(browser, helpers, tmp_path, url_of) -> None:
    a, _ = helpers.make_run(tmp_path / "a", child_loops=2)
    b, _ = helpers.make_run(tmp_path / "b", child_loops=8)
    out = helpers.eval_dir(tmp_path, {"child2": a, "child8": b})
    dom = browser.dom(url_of(write_index(out)))
    assert dom.count('<a href="trajectories/child') == 2 and "eval results · sniah" in dom
    assert re.search(r'<td class="col-config">child8</td><td class="col-n">1</td><td class="col-score">1.000', dom)
    page = browser.dom(url_of(out / "trajectories/child8/item-0.html"))
    assert count(page, "turn") == 3


def test_truncated_log_page_warns(browser, real_run, tmp_path, url_of) -> None:
    text = real_run[0].read_text()
    torn = tmp_path / "torn.jsonl"
    torn.write_text(text[: len(text) - 40])
    dom = browser.dom(url_of(write_run_page(torn)))
    assert 'class="warning"' in dom and "is incomplete" in dom and "no run end yet" in dom


class GrowingServer(FollowServer):
    """Appends lines to the log when the page first polls: the event arrives after the page loaded."""

    def __init__(self, log, lines, **kw) -> None:
        super().__init__(log, **kw)
        self.lines = lines

    def data(self, offset):
        if self.lines:
            with open(self.log_path, "a") as f:
                f.write("".join(self.lines))
            self.lines = []
        return super().data(offset)


def test_follow_page_receives_a_new_event(browser, real_run, tmp_path) -> None:
    lines = real_run[0].read_text().splitlines(keepends=True)
    turns = [i for i, line in enumerate(lines) if '"type":"root_turn"' in line and '"depth":0' in line]
    live = tmp_path / "live.jsonl"
    live.write_text("".join(lines[: turns[1]]))  # up to the first turn's cell
    with GrowingServer(live, lines[turns[1]: turns[1] + 1], port=0, interval_ms=200) as server:
        dom = browser.dom(server.url)  # loaded with one turn; its first poll brought the second
        assert count(dom, "turn") == 2 and "● live · " in dom
        with open(live, "a") as f:
            f.write("".join(lines[turns[1] + 1:]))
        dom = browser.dom(server.url)
        assert count(dom, "turn") == 3 and "● finished" in dom


def test_screenshot_of_a_run_page(browser, page, url_of) -> None:
    shot = browser.screenshot(url_of(page) + "#expand=all", page.with_name("run.png"))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
