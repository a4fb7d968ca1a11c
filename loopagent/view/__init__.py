"""``loopagent view``: self-contained HTML pages of trajectories, and a live page of a running run.

Example::

    from loopagent.view import write_run_page, write_compare_page, write_index, FollowServer

    write_run_page("runs/x.jsonl")                      # runs/x.html: one file, no network needed
    write_compare_page("runs/a.jsonl", "runs/b.jsonl")  # side by side, aligned by root turn
    write_index("evals-out/sniah")                      # one row per item and configuration
    with FollowServer("runs/x.jsonl") as server:        # a live page on 127.0.0.1
        print(server.url)
"""

from loopagent.view.index import write_index
from loopagent.view.load import Log, SchemaTooNew, ViewError, load_log
from loopagent.view.render import write_compare_page, write_run_page
from loopagent.view.server import FollowServer

__all__ = ["FollowServer", "Log", "SchemaTooNew", "ViewError", "load_log", "write_compare_page", "write_index",
           "write_run_page"]
