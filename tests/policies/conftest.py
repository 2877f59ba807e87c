"""Fixtures: the built-in policies."""

from __future__ import annotations

import pytest

from policies import Policy, load_policy


@pytest.fixture(scope="session")
def strict() -> Policy:
    return load_policy("strict")


@pytest.fixture(scope="session")
def balanced() -> Policy:
    return load_policy("balanced")


@pytest.fixture(scope="session")
def research() -> Policy:
    return load_policy("research")
