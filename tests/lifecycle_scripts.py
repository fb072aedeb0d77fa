"""What the lifecycle tests' scripts run with: an environment free of CMS_ settings, one sandbox."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cms_outbox.sandbox import Sandbox
from tests.conftest import TOKEN


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    with Sandbox(token=TOKEN, latency=0.02) as server:
        yield server
