"""Fixtures of the adversarial tests (the scripted malicious server and its sites are in adversary.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmed.fl.site import training


@pytest.fixture(autouse=True)
def _every_adversarial_test_has_a_task_identity(task_identity):
    """The scripted server builds Flower messages (`task_identity` is in tests/conftest.py)."""


@pytest.fixture
def updates(monkeypatch) -> dict[str, list[np.ndarray]]:
    """{party: the updates it computed, in order}: the ground truth a test measures the server's
    best estimate against (the sites compute them as always; the test only keeps a copy)."""
    kept: dict[str, list[np.ndarray]] = {}
    computed = training.local_update

    def local_update(session, start: np.ndarray) -> np.ndarray:
        vector = computed(session, start)
        kept.setdefault(session.party, []).append(vector.copy())
        return vector

    monkeypatch.setattr(training, "local_update", local_update)
    return kept
