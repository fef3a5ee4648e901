"""Template filters of the board's own."""

import functools

from django import template
from django.urls import reverse
from django.utils.safestring import mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

register = template.Library()


@register.filter
def diff_html(text: str) -> str:
    """A unified diff as HTML spans coloured by Pygments' DiffLexer (every character of ``text``
    is escaped by Pygments), for a ``<pre class="diff highlight">``."""
    return mark_safe(highlight(text or "", DiffLexer(), HtmlFormatter(nowrap=True)))  # noqa: S308 - escaped by Pygments


@register.filter
def ordinal(number) -> str:
    """1 → "1st", 2 → "2nd", 3 → "3rd", 11 → "11th", 22 → "22nd" (English); "" for a non-number."""
    try:
        n = int(number)
    except (TypeError, ValueError):
        return ""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@register.filter
def queue_place(queue: dict | None, run):
    """The QueuePlace of ``run`` in ``queue`` (RunQuerySet.queue_positions, keyed by run id), or
    None when the run is not queued or the queue was not read."""
    if not queue or run is None:
        return None
    return queue.get(run.pk)


_URL_SENTINEL = 987654321  # stands for the id in a reversed URL, replaced by the real one


@functools.lru_cache(maxsize=64)
def _url_pattern(name: str) -> str:
    return reverse(name, args=[_URL_SENTINEL])


@register.filter
def card_url(object_id, name: str) -> str:
    """``{% url name object_id %}`` for a URL that takes one id, reversed once per name and then
    filled in: the board renders a thousand cards with several such links each, and reversing each
    was a sixth of the render (bench/board_render.py). The board is served at the root, so the
    script prefix cached with the pattern does not vary."""
    return _url_pattern(name).replace(str(_URL_SENTINEL), str(int(object_id)))
