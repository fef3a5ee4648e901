"""Template filters of the board's own."""

import functools
import re
import threading
from collections import OrderedDict

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


@register.filter
def clock(seconds) -> str:
    """A duration in whole seconds as board.js's clock shows it: "0:07", "12:30", "1:02:03" (hours
    only when there are some); "" for a non-number. Negative durations show as 0:00."""
    try:
        seconds = max(0, int(seconds))
    except (TypeError, ValueError):
        return ""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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


# --- The board's card fragments, kept per process --------------------------------------------

CARD_CACHE_SIZE = 5000  # rendered cards kept (about 1 KB each)
# (card id, oob) -> (the card_fingerprint it was rendered with, its HTML): compared with == rather
# than looked up by its repr(), which was a tenth of a 1,000-card board's render.
_card_cache: OrderedDict[tuple, tuple[tuple, str]] = OrderedDict()
_card_cache_lock = threading.Lock()


def _values(obj) -> tuple:
    """Every loaded field of a model instance (what a template could read from it); not the
    dependencies read ahead, which card_fingerprint takes itself."""
    skip = getattr(obj, "DEPENDS_ON_READ", "_")
    return tuple(value for name, value in obj.__dict__.items() if not name.startswith("_") and name != skip)


def card_fingerprint(context) -> tuple | None:
    """What the card partial's output depends on, as a tuple (the oob flag first): every loaded
    field of the card, its current run, its agent and the cards it depends on, a queued run's
    place in line (and its project's limit, shown for a held run) and, for a run waiting for the lead,
    whether its forms carry a CSRF token (CachedCardNode puts each request's own in). None when
    the output must not be kept: a card without its run, agent or dependencies read in advance
    (a push, which renders a card that changed anyway) and a card with an error."""
    card = context.get("card")
    if card is None or context.get("error"):
        return None
    cached = card._state.fields_cache
    deps = card.__dict__.get(card.DEPENDS_ON_READ)
    if deps is None:
        deps = getattr(card, "_prefetched_objects_cache", {}).get("depends_on")
    if "current_run" not in cached or "agent" not in cached or deps is None:
        return None
    run = cached["current_run"]
    extra = None
    if run is not None and run.state == "queued":
        place = (context.get("queue") or {}).get(run.pk)
        extra = (place, place is not None and place.held and card.project.max_parallel)
    elif run is not None and run.state == "awaiting_approval":
        extra = _request_token(context) != ""
    agent = cached["agent"]
    return (
        bool(context.get("oob")), _values(card), run and _values(run), agent and _values(agent),
        [_values(dep) for dep in deps], extra,
    )


# Stands in a kept card's forms for the CSRF token of the request that renders it.
_TOKEN_SLOT = "csrf0token0slot0for0a0kept0card"


def _request_token(context) -> str:
    """The CSRF token ``{% csrf_token %}`` would put in a form here, or "" (a push, which has no
    request)."""
    token = context.get("csrf_token")
    return "" if not token or token == "NOTPROVIDED" else str(token)


# The template's indentation and the blank lines its {% if %}s leave between tags: a tenth of a
# board of 1,000 cards, and as text nodes between tags some 14,000 of the page's 38,000 nodes, for
# the browser to parse, style and walk (bench/board_render.py). A card's tags with whitespace
# between them are blocks or flex items, where it renders as nothing, so it goes; a card with a
# <pre> or <textarea> (a diff, an answer being written) is left as it is.
_GAPS = re.compile(r">\s*\n\s*<")


def _squeeze(html: str) -> str:
    if "<pre" in html or "<textarea" in html:
        return html
    return _GAPS.sub("><", html)


class CachedCardNode(template.Node):
    def __init__(self, nodelist):
        self.nodelist = nodelist

    def render(self, context):
        fingerprint = card_fingerprint(context)
        if fingerprint is None:
            return _squeeze(self.nodelist.render(context))
        key, html = (context["card"].pk, fingerprint[0]), None
        with _card_cache_lock:
            kept = _card_cache.get(key)
            if kept is not None and kept[0] == fingerprint:
                html = kept[1]
                _card_cache.move_to_end(key)
        if html is None:
            if _request_token(context):  # kept without this request's token (a push has none)
                with context.push(csrf_token=_TOKEN_SLOT):
                    html = _squeeze(self.nodelist.render(context))
            else:
                html = _squeeze(self.nodelist.render(context))
            with _card_cache_lock:
                _card_cache[key] = (fingerprint, html)
                _card_cache.move_to_end(key)
                while len(_card_cache) > CARD_CACHE_SIZE:
                    _card_cache.popitem(last=False)
        return html.replace(_TOKEN_SLOT, _request_token(context)) if _TOKEN_SLOT in html else html


@register.tag
def cached_card(parser, token):
    """``{% cached_card %}…{% endcached_card %}`` around the board's card: the same card, unchanged,
    is rendered once per process and then reused (card_fingerprint says when it is the same).
    Rendering a thousand cards through the template engine took most of a board's render
    (bench/board_render.py); a board mostly shows cards that did not change since the last
    render. Whatever the card's HTML shows must come from the card, its run, its agent, its
    dependencies, the queue or the oob flag, or the fingerprint must say so."""
    nodelist = parser.parse(("endcached_card",))
    parser.delete_first_token()
    return CachedCardNode(nodelist)
