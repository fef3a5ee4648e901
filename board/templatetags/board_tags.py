"""Template filters of the board's own."""

from django import template
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
