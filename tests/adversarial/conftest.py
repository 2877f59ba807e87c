"""Fixtures of the adversarial tests (the scripted malicious server and its sites are in adversary.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmed.fl.site import training


@pytest.fixture(autouse=True)
def _every_adversarial_test_has_a_task_identity(task_identity):
    """The scripted server builds Flower messages (`task_identity` is in tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The sites train one after the other in this process; on a shared machine one thread trains
    the tiny model 100 times faster than two that wait for each other (0.05 s against 7 s a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
