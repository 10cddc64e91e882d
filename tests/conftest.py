"""Shared fixtures: the anyio plugin runs every async test on trio."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
