"""The headers the gateway sends with its own calls to the registry on a client's behalf (start, complete, the
legacy start): the X-Forwarded-For chain is the one a forwarded request carries."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.edges.forwarder import ForwardingPolicy
from gateway.face.routes import registry_headers


def request_from(peer: str, *headers: tuple[str, str]) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 40000) if name == "peername" else default
    return make_mocked_request("POST", "/v2/imagefile/1/_multipart", headers=CIMultiDict(headers), transport=transport)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("10.0.0.2", "203.0.113.9, 198.51.100.7, 10.0.0.2"),  # the trusted proxy: every line it sent, then itself
        ("192.0.2.5", "192.0.2.5"),  # anyone else: only the peer, whatever it claims
    ],
)
def test_the_forwarded_for_chain_trusts_every_line_of_a_trusted_proxy_only(peer: str, expected: str) -> None:
    policy = ForwardingPolicy(b"registry:8000", trusted_proxies=["10.0.0.0/8"])
    request = request_from(
        peer,
        ("Authorization", "Bearer t"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-For", "198.51.100.7"),
    )

    headers = registry_headers(request, policy)

    assert headers["X-Forwarded-For"] == expected
    assert headers["Authorization"] == "Bearer t"
