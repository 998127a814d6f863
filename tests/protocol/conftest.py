"""Shared builders for the protocol tests: fixed identities and valid messages to vary.

Test modules here are not a package, so builders are handed out as fixtures. Every
fixture is session-scoped (and deterministic), which keeps them usable from hypothesis
tests without the function-scoped-fixture health check firing.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    CapacityAd,
    Device,
    InputFile,
    JobResult,
    JobSpec,
)
from protocol.codec import pack
from protocol.signing import VERSION
from tests import factories
from tests.factories import NOW_MS


class Build:
    """Valid messages with keyword overrides (tests/factories.py); three fixed identities."""

    def __init__(self) -> None:
        self.alice = factories.ALICE  # requester
        self.bob = factories.BOB  # provider
        self.carol = factories.CAROL  # a third party
        self.now_ms = NOW_MS

    def device(self, **kw: Any) -> Device:
        return factories.device(**kw)

    def ad(self, **kw: Any) -> CapacityAd:
        return factories.ad(**kw)

    def input_file(self, name: str = "main.py", **kw: Any) -> InputFile:
        return factories.input_file(name, **kw)

    def spec(self, **kw: Any) -> JobSpec:
        return factories.spec(**kw)

    def result(self, **kw: Any) -> JobResult:
        return factories.result(**kw)


def envelope(body: Any, *, type_name: str, sig: Any, v: Any = VERSION,
             **extra: Any) -> bytes:
    """A signed envelope packed by hand with the canonical codec."""
    return pack({"v": v, "type": type_name, "body": body, "sig": sig, **extra})


@pytest.fixture(scope="session")
def build() -> Build:
    return Build()


@pytest.fixture(scope="session")
def pack_envelope() -> Any:
    return envelope
