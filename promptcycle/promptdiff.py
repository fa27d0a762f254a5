"""Showing prompt versions to a person: a version's text, and a unified diff against another version,
as Markdown for the reports and Prefect artifacts.

    prompt_markdown("You are…", "Here is {{customer}}…")       # a fenced block: system, then template
    diff_markdown(production, candidate, "a1b2c3", "d4e5f6")  # a ```diff block, or "identical"
"""

from __future__ import annotations

import difflib
import re

__all__ = ["prompt_text", "prompt_diff", "fenced", "prompt_markdown", "diff_markdown"]


def prompt_text(system: str | None, template: str) -> str:
    """One text for a version: the system message (when there is one) above the user template."""
    if system:
        return f"[system]\n{system}\n\n[user]\n{template}"
    return template


def prompt_diff(old: tuple[str | None, str], new: tuple[str | None, str], old_name: str, new_name: str) -> str:
    """The unified diff from `old` to `new` (each `(system, template)`); empty when they are identical."""
    lines = difflib.unified_diff(prompt_text(*old).splitlines(), prompt_text(*new).splitlines(),
                                 fromfile=old_name, tofile=new_name, lineterm="")
    return "\n".join(lines)


def fenced(text: str, info: str = "") -> str:
    """A Markdown code block holding `text` verbatim (the fence is longer than any backtick run in it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def prompt_markdown(system: str | None, template: str) -> str:
    return fenced(prompt_text(system, template), "text")


def diff_markdown(old: tuple[str | None, str], new: tuple[str | None, str], old_name: str, new_name: str) -> str:
    diff = prompt_diff(old, new, old_name, new_name)
    return fenced(diff, "diff") if diff else f"`{new_name}` is identical to `{old_name}`."
