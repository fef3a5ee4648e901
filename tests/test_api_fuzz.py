"""The REST API fuzzed with hypothesis: arbitrary ids in paths, query strings, JSON bodies (junk
types, huge numbers, unicode, nested structures), raw bytes and tokens, against every endpoint.
Whatever comes in, the answer is never a 5xx (and the test client re-raises any exception a view
lets escape). Derandomized, so every run tries the same inputs; about 30 s in all."""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import HealthCheck, given, settings, strategies as st

from board.models import Agent, ApiToken, Card, Membership, Role

pytestmark = pytest.mark.django_db

FUZZ = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Numbers that break naive code: past 64 bits, negative, zero, floats, NaN and infinities.
numbers = st.one_of(
    st.integers(), st.integers(min_value=2**31 - 2, max_value=2**64 + 2), st.integers(min_value=-(2**70), max_value=1),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 10**30]),
)
texts = st.one_of(
    st.text(max_size=40), st.text(st.characters(codec="utf-8"), max_size=400),
    st.sampled_from(["", " ", "\x00", "\ud800", "🙂" * 50, "a" * 301, "1", "-1", "1e999", "NaN", "null", "built-in",
                     "act", "plan", "idle", "queued", "backlog", "../..", "%00", "' OR 1=1 --"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20,
)
CARD_FIELDS = ["project", "title", "prompt", "agent", "mode", "labels", "depends_on", "start_when_ready", "start"]


@pytest.fixture
def world(make_card, project):
    """Ids the fuzzer mixes in among the junk, so it reaches past the first checks: a superuser's
    token, a viewer's token, a project and a few cards (one running)."""
    admin = User.objects.create_user("admin", is_superuser=True)
    viewer = User.objects.create_user("viewer")
    Membership.objects.create(user=viewer, project=project, role=Role.VIEWER)
    cards = [make_card("true"), make_card("true", title="Second")]
    cards[1].start()
    return {
        "tokens": [ApiToken.issue(admin, "fuzz")[1], ApiToken.issue(viewer, "viewer")[1]],
        "project": project.pk, "cards": [card.pk for card in cards],
        "runs": [cards[1].current_run_id], "agents": [agent.pk for agent in Agent.objects.all()],
    }


def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def ids(world_key):
    """A real id of ``world_key`` or any number or text, as a path segment."""

    def strategy(world):
        real = world[world_key] if isinstance(world[world_key], list) else [world[world_key]]
        segment = lambda value: quote(str(value), safe="", errors="surrogatepass")  # noqa: E731
        return st.one_of(st.sampled_from(real), numbers, texts).map(segment)

    return strategy


def assert_no_server_error(response, what):
    assert response.status_code < 500, f"{what} gave {response.status_code}: {response.content[:500]!r}"


def card_bodies(world):
    """Card-shaped objects whose fields are real values or junk, or any JSON value at all."""
    real = {
        "project": st.just(world["project"]), "title": st.text(min_size=1, max_size=20),
        "agent": st.sampled_from(["built-in", *world["agents"]]), "mode": st.sampled_from(["act", "plan"]),
        "labels": st.lists(st.text(max_size=12), max_size=4), "depends_on": st.lists(st.sampled_from(world["cards"]), max_size=2),
        "start": st.booleans(), "start_when_ready": st.booleans(),
    }
    field = lambda name: (real[name] | json_values) if name in real else json_values  # noqa: E731
    mostly_real = st.fixed_dictionaries(
        {"project": real["project"], "title": real["title"] | texts},
        optional={name: real.get(name, texts) | (json_values if name in ("labels", "agent") else st.nothing())
                  for name in CARD_FIELDS if name not in ("project", "title")},
    )
    shaped = st.fixed_dictionaries({}, optional={name: field(name) for name in CARD_FIELDS})
    return mostly_real | shaped | json_values | st.dictionaries(texts, json_values, max_size=4)


@settings(max_examples=400, **FUZZ)
@given(data=st.data())
def test_creating_cards_from_any_json_never_gives_a_server_error(world, data):
    body = data.draw(card_bodies(world))
    token = data.draw(st.sampled_from(world["tokens"]))
    try:
        encoded = json.dumps(body)
    except ValueError:  # a surrogate json cannot encode raw: send it escaped, as JSON allows
        encoded = json.dumps(body, ensure_ascii=True)
    response = client().post("/api/cards/", encoded, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_no_server_error(response, f"POST /api/cards/ {encoded[:300]}")
    if response.status_code == 201:
        assert Card.objects.filter(pk=response.json()["id"]).exists()


POSTS = ["/api/cards/", "/api/cards/{card}/start", "/api/cards/{card}/stop"]
GETS = ["/api/projects/", "/api/projects/{project}/", "/api/cards/", "/api/cards/{card}/", "/api/cards/{card}/log"]
QUERY_KEYS = ["project", "column", "status", "limit", "offset", "after", "run", "card", "x"]


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_raw_bytes_and_any_content_type_never_give_a_server_error(world, data):
    url = data.draw(st.sampled_from(POSTS)).format(card=data.draw(ids("cards")(world)))
    body = data.draw(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
    content_type = data.draw(st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                              "multipart/form-data; boundary=x", ""]))
    response = client().post(url, body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {world['tokens'][0]}")
    assert_no_server_error(response, f"POST {url} {body[:200]!r} as {content_type}")


@settings(max_examples=400, **FUZZ)
@given(data=st.data())
def test_any_path_id_and_query_string_never_give_a_server_error(world, data):
    template = data.draw(st.sampled_from(GETS + POSTS[1:]))
    url = template.format(card=data.draw(ids("cards")(world)), project=data.draw(ids("project")(world)))
    values = st.one_of(st.sampled_from([str(world["project"]), *map(str, world["cards"]), *map(str, world["runs"])]),
                       numbers.map(str), texts)
    query = data.draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS) | texts, values), max_size=5))
    full = f"{url}?{urlencode(query, encoding='utf-8', errors='surrogatepass')}" if query else url
    token = data.draw(st.sampled_from(world["tokens"]))
    method = "post" if template in POSTS else "get"
    response = getattr(client(), method)(full, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_no_server_error(response, f"{method.upper()} {full}")


@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_any_token_header_never_gives_a_server_error_and_junk_is_401(world, data):
    junk = data.draw(st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300))
    scheme = data.draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
    header = data.draw(st.sampled_from(["HTTP_AUTHORIZATION", "HTTP_X_BOARD_TOKEN"]))
    url = data.draw(st.sampled_from(GETS)).format(card=world["cards"][0], project=world["project"])
    response = client().get(url, **{header: (scheme if header == "HTTP_AUTHORIZATION" else "") + junk})
    assert_no_server_error(response, f"GET {url} with {header}={junk!r}")
    assert response.status_code == 401
