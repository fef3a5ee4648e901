"""Choosing among the variants of a card (issue 7, "Several models on one card"): land the chosen
card and clean up the others. Joins the domain's guards (``Card.check_can_choose``) with landing
(agents.landing) and deletion (agents.runner.delete_card), as the runner joins runs with git.
"""

from __future__ import annotations

from agents import landing, runner, worktrees
from board.models import BoardError, Card


def choose_variant(card: Card, keep_branches: bool = False, mode: str | None = None) -> str:
    """Land ``card`` as the chosen one of its group (agents.landing.land_card, by ``mode`` or the
    card's landing mode), then remove every other card of the group from the board: its worktree
    removed after what it held uncommitted is committed on its branch, and its branch deleted,
    unless ``keep_branches`` (then a branch holding commits that are not on the base stays, to be
    looked at later). Returns a sentence saying what happened.

    Raises BoardError as ``Card.check_can_choose`` (no variants, another still running or landed
    already, not in Review…) and the errors of ``land_card`` (a dirty checkout, conflicts…); in
    both cases nothing changed. A variant that cannot be cleaned up after the landing is named in
    the sentence, never raised: the landing has happened."""
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card.pk)
    others = card.check_can_choose()
    note = landing.land_card(card, mode)
    removed, notes = [], []
    for other in others:
        other = Card.objects.select_related("project", "agent", "current_run").filter(pk=other.pk).first()
        if other is None:  # deleted meanwhile by someone else: nothing left to clean up
            continue
        try:
            said = runner.delete_card(other, delete_branch=not keep_branches)
        except (BoardError, worktrees.GitError) as exc:
            notes.append(f"#{other.pk} ({other.variant_label}) was not removed: {exc}")
            continue
        removed.append(other.pk)
        if "kept" in said:
            notes.append(f"#{other.pk}: {said}")
    Card.objects.get(pk=card.pk).record_choice(removed)
    listed = ", ".join(f"#{pk}" for pk in removed)
    parts = [note, f"The other variant{'s' if len(removed) != 1 else ''} ({listed}) removed from the board."
             if removed else "", *notes]
    return " ".join(part for part in parts if part)
