"""Fixtures of the model tests."""

from __future__ import annotations

import socket

import pytest

from segkit.models import weights


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """No network: every TCP connection fails; the addresses tried are recorded."""
    tried: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        tried.append(address)
        raise OSError("Network is unreachable")

    for variable in weights.PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried
