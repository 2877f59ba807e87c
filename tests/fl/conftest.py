"""Fixtures of the fl tests (helpers for small federations are in fl_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_fl_test_has_a_task_identity(task_identity):
    """Every test here builds Flower messages (`task_identity` is in tests/conftest.py)."""
