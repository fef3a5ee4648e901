"""Websockets check who connects: with a login required (or from a client that is not loopback)
only a logged-in user with a role in the project gets its pushes; origins are validated."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from board.models import Membership
from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

OWN = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


@database_sync_to_async
def session_of(username: str, project=None, role: str | None = None) -> bytes:
    """A logged-in session for a new account ``username`` (with ``role`` in ``project``), as the
    Cookie header a browser would send."""
    user = get_user_model().objects.create(username=username)
    if role:
        Membership.objects.create(user=user, project=project, role=role)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(path: str, headers=OWN, cookie: bytes | None = None, client_address: str | None = None):
    communicator = WebsocketCommunicator(application, path, headers=headers + ([(b"cookie", cookie)] if cookie else []))
    if client_address:
        communicator.scope["client"] = [client_address, 40000]
    connected, code = await communicator.connect()
    await communicator.disconnect()
    return connected, code


async def test_with_a_login_required_an_anonymous_socket_is_closed_with_4403(project, make_card, settings):
    settings.BOARD_LOGIN_REQUIRED = True
    card = await database_sync_to_async(make_card)()
    assert await connect(f"/ws/projects/{project.pk}/") == (False, 4403)
    assert await connect(f"/ws/cards/{card.pk}/") == (False, 4403)


async def test_with_a_login_required_a_viewer_gets_the_board_and_an_outsider_does_not(project, make_card, settings):
    settings.BOARD_LOGIN_REQUIRED = True
    card = await database_sync_to_async(make_card)()
    viewer = await session_of("vera", project, "viewer")
    outsider = await session_of("otto")
    assert (await connect(f"/ws/projects/{project.pk}/", cookie=viewer))[0] is True
    assert (await connect(f"/ws/cards/{card.pk}/", cookie=viewer))[0] is True
    assert await connect(f"/ws/projects/{project.pk}/", cookie=outsider) == (False, 4403)
    assert await connect(f"/ws/cards/{card.pk}/", cookie=outsider) == (False, 4403)


async def test_a_client_that_is_not_loopback_needs_a_login_even_when_none_is_required(project, settings):
    settings.BOARD_LOGIN_REQUIRED = False
    assert await connect(f"/ws/projects/{project.pk}/", client_address="192.168.1.7") == (False, 4403)
    assert (await connect(f"/ws/projects/{project.pk}/", client_address="127.0.0.1"))[0] is True
    proxied = OWN + [(b"x-forwarded-for", b"203.0.113.9")]
    assert await connect(f"/ws/projects/{project.pk}/", headers=proxied, client_address="127.0.0.1") == (False, 4403)
    member = await session_of("mia", project, "member")
    assert (await connect(f"/ws/projects/{project.pk}/", cookie=member, client_address="192.168.1.7"))[0] is True


async def test_the_board_s_own_origin_is_accepted_and_a_foreign_one_refused(project):
    assert (await connect(f"/ws/projects/{project.pk}/", headers=OWN))[0] is True
    assert (await connect(f"/ws/projects/{project.pk}/", headers=[(b"origin", b"http://localhost:8000"), (b"host", b"localhost")]))[0] is True
    foreign = [(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1")]
    assert (await connect(f"/ws/projects/{project.pk}/", headers=foreign))[0] is False
