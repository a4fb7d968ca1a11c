"""Prompts the controller shows the root model."""

from __future__ import annotations

from typing import NamedTuple

from loopagent.environments import ContextInfo

SYSTEM_TEMPLATE = """\
You answer a question about a context that is too long to read at once. {context_line}

Write Python in ```repl code blocks. Each block runs in a persistent REPL (variables stay between \
blocks and turns) and you see what it prints, at most {max_output:,} characters per block, in the next message. \
Look at the context's structure first, then slice, search (import re, json, collections, ... work) and split it, \
ask child models about the pieces, combine what they say, and end with FINAL. Never guess without looking.

Functions in the REPL:
- llm_query(prompt, loops=None, model=None, max_tokens=None, temperature=None) -> str: ask a child model. \
It cannot see `context`: put the text it needs into the prompt.
- llm_batch(prompts, loops=None, model=None, max_tokens=None, temperature=None) -> list[str]: many llm_query \
calls at once, run concurrently; much faster than a loop.
- rlm_query(prompt, context=None, loops=None, model=None) -> str: hand a sub-question and its own context to a \
child that has its own REPL like yours{depth_note}.
- rlm_batch(prompts, contexts=None, loops=None, model=None) -> list[str]: several rlm_query calls at once.
- FINAL(answer): finish with this answer. FINAL_VAR(name): finish with the value of the variable `name`.
{tools_block}{loops_line}
`max_tokens` caps the length of a reply; `temperature` samples (0 is greedy{cache_note}). {window_line}{models_line}
Limits: {limits_line}{session_line}"""


class NamedModel(NamedTuple):
    """A named child model as the system prompt lists it (``RLM(models=...)``)."""

    name: str
    spec: str
    looped: bool
    default_loops: int | None = None
    max_loops: int | None = None
    context_window: int | None = None


def context_line(info: ContextInfo) -> str:
    """The system prompt's sentence about the context, from what the environment loaded."""
    kind = info.type
    if kind == "none":
        return "There is no `context` variable for this question; work from the question itself."
    if kind == "str":
        line = f"It is loaded in a Python REPL as `context`, a str of {info.chars:,} characters."
    elif kind == "bytes":
        line = f"It is loaded in a Python REPL as `context`, bytes of length {info.bytes:,}."
    elif kind == "list":
        line = (
            f"It is loaded in a Python REPL as `context`, a list of {info.items:,} items "
            f"({info.chars:,} characters of text)."
        )
    elif kind == "dict":
        line = f"It is loaded in a Python REPL as `context`, a dict with {info.keys:,} keys."
    elif kind == "directory":
        line = (
            f"It is loaded in a Python REPL as `context`, a directory of {info.files:,} files ({info.bytes:,} bytes): "
            "`context.files` lists their paths, `context[path]` reads one as text."
        )
    elif kind == "file":
        line = f"It is loaded in a Python REPL as `context`, the text of a file of {info.bytes:,} bytes."
    else:
        line = f"It is loaded in a Python REPL as `context` ({kind})."
    if info.preview:
        line += f" It begins: {info.preview!r}"
    return line


def system_prompt(
    *,
    context: ContextInfo,
    max_output: int,
    can_recurse: bool,
    child_looped: bool,
    child_default_loops: int | None,
    child_max_loops: int | None,
    limits: list[str],
    earlier: list[tuple[str, str | None]] | None = None,
    tools: list[str] | None = None,
    child_tools: list[str] | None = None,
    child_window: int | None = None,
    oversize: str = "error",
    models: list[NamedModel] | None = None,
    cache: bool = False,
    history_variable: str | None = None,
) -> str:
    """The root model's system prompt.

    ``tools`` are the lines of the run's own tools (``Tool.describe()``); ``child_tools`` the
    names of the tools child RLMs get (None: say nothing, e.g. where ``rlm_query`` starts none).
    ``history_variable`` names the REPL variable compaction keeps the full conversation in
    (None: compaction cannot happen, nothing is said).
    """
    if child_looped:
        loops_line = (
            f"`loops` is the child's loop budget (latent depth: how many times its shared block runs per token). "
            f"More loops think harder and cost more; default {child_default_loops}"
            + (f", at most {child_max_loops}" if child_max_loops else "")
            + ". Leave it None unless a piece needs more or less thought."
        )
    else:
        loops_line = "The child model is not looped: leave `loops` unset."
    depth_note = "" if can_recurse else " (at this depth it falls back to llm_query with the context appended)"
    session_line = ""
    if earlier:
        shown = "\n".join(f"- Q: {q}\n  A: {a}" for q, a in earlier[-5:])
        session_line = f"\n\nEarlier questions in this session (their REPL variables still exist):\n{shown}"
    if oversize == "split":
        too_long = "a longer prompt is cut into pieces asked one by one and the answers are joined"
    else:
        too_long = "a longer prompt is refused: split the text and use llm_batch"
    window_line = (f"The default child reads at most {child_window:,} tokens per prompt (reply included); {too_long}."
                   if child_window else "")
    models_line = ""
    if models:
        rows = "\n".join(f"- {m.name!r}: {m.spec}, {_model_facts(m)}" for m in models)
        models_line = ("\nNamed models (pass model=\"name\"; without it the default child answers; for rlm_query the "
                       f"child's own root is that model):\n{rows}")
    return SYSTEM_TEMPLATE.format(
        tools_block=tools_block(tools or [], child_tools),
        cache_note="; identical greedy calls are answered once, from a cache" if cache else "",
        window_line=window_line,
        models_line=models_line,
        context_line=context_line(context),
        max_output=max_output,
        depth_note=depth_note,
        loops_line=loops_line,
        limits_line="; ".join(limits) + ".",
        session_line=session_line,
    ) + (compaction_note(history_variable) if history_variable else "")


def tools_block(tools: list[str], child_tools: list[str] | None) -> str:
    """The system prompt's list of the user's tools (empty without any)."""
    if not tools:
        if child_tools:
            return f"Children started with rlm_query can also call these tools: {', '.join(child_tools)}.\n"
        return ""
    lines = "\n".join(f"- {t}" for t in tools)
    note = ""
    if child_tools is not None:
        note = (f" Children started with rlm_query have these tools: {', '.join(child_tools)}." if child_tools
                else " Children started with rlm_query do not have them.")
    return (
        "Tools (your own functions for this task; they run outside the REPL and take and return plain data: "
        "None, bool, int, float, str, lists, tuples and dicts with str keys; an error in a tool is raised in "
        f"your code as HostFunctionError naming it).{note}\n{lines}\n"
    )
def _model_facts(m: NamedModel) -> str:
    if m.looped:
        facts = f"looped: default {m.default_loops} loops" + (f", at most {m.max_loops}" if m.max_loops else "")
    else:
        facts = "not looped (leave loops unset)"
    if m.context_window:
        facts += f"; reads at most {m.context_window:,} tokens per prompt"
    return facts


NO_CODE = (
    "Your reply had no ```repl code block and no FINAL(...). Write Python in a ```repl block to work on the "
    "context, or finish with FINAL(answer)."
)


def final_unreadable(written: str) -> str:
    """The reply to a FINAL written as text whose argument is not an answer (see loopagent.parsing)."""
    shown = written if len(written) <= 200 else written[:200] + "..."
    return (
        f"Your FINAL could not be read: {shown}\n"
        'Write the answer as a quoted string, e.g. FINAL("the answer"), or a short plain answer on one line, '
        'e.g. FINAL(Paris). To finish with a computed value, call FINAL(value) inside a ```repl block, or '
        'assign it to a variable and write FINAL_VAR("name").'
    )


def final_var_missing(name: str) -> str:
    """The reply to FINAL_VAR(name) written as text for a variable the REPL does not have."""
    return f"FINAL_VAR({name}): variable {name!r} is not defined in the REPL; assign it first or use FINAL(answer)."


def final_var_unreadable(name: str, reason: str) -> str:
    """The reply to FINAL_VAR(name) written as text for a variable that cannot be read back."""
    return f"FINAL_VAR({name}) could not be read: {reason}. Put the answer in a str variable, or use FINAL(answer)."


OUT_OF_TURNS = "You are out of turns. Reply now with FINAL(your best answer), using what you found so far."


def repl_feedback(outputs: list[str]) -> str:
    if len(outputs) == 1:
        return f"REPL output:\n{outputs[0] or '(no output)'}"
    return "\n\n".join(f"REPL output (block {i}):\n{o or '(no output)'}" for i, o in enumerate(outputs, 1))


COMPACTION_SYSTEM = """\
You keep the working notes of a long task done in a Python REPL. You are given the task, the notes written \
so far (if any) and the turns that follow them. Write the notes anew so that work can go on from them alone: \
they replace those turns in the conversation."""


def compaction_request(query: str, previous: str | None, transcript: str) -> str:
    """What the root model is asked when older turns are folded into a summary."""
    earlier = f"Notes so far:\n{previous}\n\n" if previous else ""
    return (
        f"The task: {query}\n\n{earlier}Turns to fold into the notes (your replies and what came back):\n"
        f"{transcript}\n\n"
        "Write the new notes: a faithful summary of what was found (facts, numbers, partial answers, with where "
        "they came from), every REPL variable that was defined and still matters (its name and what it holds), "
        "what was tried and failed, and what remains to be done. Be specific and complete; do not invent "
        "anything; no code blocks, no FINAL."
    )


def compaction_summary(summary: str, turns: int, variable: str | None) -> str:
    """The message that stands for the folded turns in the root's conversation."""
    where = (f"; every message of them, word for word, is in the REPL variable `{variable}` (a list of "
             "{'role', 'content'} dicts)") if variable else ""
    return f"[Your earlier {turns} turns were folded into these notes to save context{where}.]\n\n{summary}"


def compaction_note(variable: str) -> str:
    """The system prompt's line about compaction (only when it can happen)."""
    return (f"\nWhen the conversation nears the context limit, older turns are replaced by notes you write; the "
            f"full conversation stays in the REPL variable `{variable}` (do not use that name yourself).")


def transcript(messages: list[dict[str, str]]) -> str:
    """Turns as the compaction request shows them."""
    labels = {"assistant": "You wrote", "user": "Then came", "system": "System"}
    return "\n\n".join(f"--- {labels.get(m['role'], m['role'])}:\n{m['content']}" for m in messages)
