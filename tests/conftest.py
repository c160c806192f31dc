"""Shared fixtures: one local Ray per session, one simulated endpoint per session, the bundled chorus sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from rae_ray.io import sample_dir  # noqa: E402

CHORUS = sample_dir()


@pytest.fixture(scope="session")
def chorus() -> Path:
    return CHORUS


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard), shared by every integration test."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sim():
    """The simulated OpenAI-compatible endpoint, a separate process on 127.0.0.1."""
    from rae_ray.sim.process import SimProcess

    with SimProcess(latency_ms=5) as server:
        yield server
