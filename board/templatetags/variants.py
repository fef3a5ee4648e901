"""The card page's "Variants" panel (issue 7): the link to the group's comparison, and the form that
starts a Backlog card on several agents or models. An inclusion tag, so the shared card page needs
one line and its view nothing more."""

from __future__ import annotations

from django import template

register = template.Library()


@register.inclusion_tag("board/_variants.html", takes_context=True)
def variants_panel(context, card):
    """The panel for ``card``: ``group`` (its group's size, 0 for none), the form (the one sent
    back with its errors when the view re-renders the page, else a fresh one) and the view's
    ``variants_error``."""
    from board.forms import VariantsForm
    from board.models import Card, Column

    group = Card.objects.filter(variant_of_id=card.variant_of_id).count() if card.variant_of_id else 0
    offer = card.column == Column.BACKLOG and not card.is_running
    return {
        "card": card, "group": group, "offer": offer,
        "form": context.get("variants_form") or (VariantsForm() if offer else None),
        "error": context.get("variants_error", ""), "csrf_token": context.get("csrf_token"),
    }
