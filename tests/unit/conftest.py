"""The unit lane: pure decisions, contracts, the CLI and the model layer on tiny models, no nats-server.

`python -m pytest -q tests/unit` is the quick loop; a unit test that starts a nats-server fails here with
where it belongs instead (tests/integration: a real broker or database; tests/e2e: service processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import pytest

from weightflow.shared import natsd


@pytest.fixture(scope="package", autouse=True)
def no_nats_server() -> Iterator[None]:
    """Package-scoped, so it is in place before any module fixture of the lane runs. It guards this process;
    a test that runs the CLI in a subprocess (`weightflow up`) belongs in tests/integration as well."""

    def refuse() -> NoReturn:
        raise AssertionError("a unit test starts no nats-server: this test belongs in tests/integration")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(natsd, "find_nats_server", refuse)
        yield


