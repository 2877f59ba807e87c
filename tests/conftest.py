"""Fixtures shared by several test folders."""

from __future__ import annotations

import pytest


@pytest.fixture
def task_identity():
    """Flower messages need a task identity; give one and restore whatever was there."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests train small models in this process; on a busy 2-core machine two torch threads that wait
    for each other train the tiny model many times slower than one (0.05 s against 7 s a step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
