"""The comparison of a card's variants (issue 7): one row per card of the group with what a lead
weighs to choose: agent or model, run state, result, diff size, checks, tokens, cost and time.

The diff size comes from the git layer's file list with line counts (``changed_files``: no patch
text is made), so a variant with a huge diff costs no more than one with a small one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agents import worktrees
from board import review
from board.models import Agent, Card, Column, Run


@dataclass
class VariantRow:
    """One card of a group as the comparison shows it. ``files``, ``added`` and ``deleted``: the
    branch's diff against where it left the base (None when it has no branch yet or git cannot
    tell, then ``diff_note`` says why). ``check``: "passed", "failed" or "" (not known), with
    ``check_note`` saying what was checked."""

    card: Card
    run: Run | None
    label: str
    files: int | None = None
    added: int | None = None
    deleted: int | None = None
    diff_note: str = ""
    check: str = ""
    check_note: str = ""

    @property
    def can_choose(self) -> bool:
        """Whether the card itself may be landed now (the group's other guards are the domain's)."""
        return self.card.column == Column.REVIEW and not self.card.landed_commit and not self.card.is_running


def diff_size(card: Card) -> tuple[int | None, int | None, int | None, str]:
    """``(files, added lines, deleted lines, note)`` of the card's branch against where it left
    the base branch; ``(None, None, None, reason)`` when there is no branch yet or git fails."""
    project = card.project
    if not card.branch:
        return None, None, None, "not started"
    if not (project.remote_url or os.path.isdir(project.repo_path)):
        return None, None, None, "the repository is gone"
    try:
        # The same source as the card's diff: with a shared remote, the pushed branch.
        repo, base, branch = review.source(card)
        old, new = worktrees.branch_range(repo, base, branch)
        files = worktrees.changed_files(repo, old, new)
    except worktrees.GitError as exc:
        return None, None, None, str(exc)[:200]
    return len(files), sum(f.added for f in files), sum(f.deleted for f in files), ""


def check_result(card: Card, run: Run | None) -> tuple[str, str]:
    """``(result, note)``: the built-in agent's last check (``Run.agent_state["check"]``: the
    project's check command, or the syntax check of changed Python files) or, for a command agent,
    whether the command itself succeeded; ("", reason) while unknown."""
    if run is None:
        return "", "not run"
    if run.is_active:
        return "", "running"
    if run.agent.kind == Agent.Kind.BUILTIN:
        check = (run.agent_state or {}).get("check")
        if not check:
            return "", "no check was run"
        what = check.get("command") or "syntax of changed Python files"
        return ("passed" if check.get("passed") else "failed"), what
    return ("passed" if run.state == "succeeded" else "failed"), "the agent's command exit status"


def rows(group: list[Card]) -> list[VariantRow]:
    """The comparison's rows for ``group`` (Card.variant_group), in its order."""
    result = []
    for card in group:
        run = card.current_run
        row = VariantRow(card=card, run=run, label=card.variant_label)
        row.files, row.added, row.deleted, row.diff_note = diff_size(card)
        row.check, row.check_note = check_result(card, run)
        result.append(row)
    return result
