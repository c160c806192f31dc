"""Fixtures for the simulated endpoint's tests: in-process servers on 127.0.0.1 (real HTTP), images."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rae_ray.sim.judge import DEFAULT_SCALE
from rae_ray.sim.process import SimThread

SCALE = [dict(grade) for grade in DEFAULT_SCALE]
FOUR_GRADES = [
    {"grade": 0, "name": "irrelevant", "description": "Not what the shopper wants."},
    {"grade": 1, "name": "marginal", "description": "Related, but not a substitute."},
    {"grade": 2, "name": "substitute", "description": "An acceptable substitute."},
    {"grade": 3, "name": "exact", "description": "Exactly what the shopper wants."},
]


def _image_data_url(colour: str | tuple[int, int, int], image_format: str = "JPEG") -> str:
    """A product photo: a coloured square on a white background, as a base64 data URL."""
    from PIL import Image

    image = Image.new("RGB", (96, 96), "white")
    image.paste(Image.new("RGB", (60, 60), colour), (18, 18))
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    mime = "image/jpeg" if image_format == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@pytest.fixture
def scale() -> list[dict[str, Any]]:
    """The project's 3-grade scale."""
    return [dict(grade) for grade in SCALE]


@pytest.fixture
def four_grades() -> list[dict[str, Any]]:
    return [dict(grade) for grade in FOUR_GRADES]


@pytest.fixture
def image_url() -> Callable[..., str]:
    """`image_url(colour, image_format="JPEG")`: a coloured square on white, as a base64 data URL."""
    return _image_data_url


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimThread]]:
    """Start simulated endpoints with `SimConfig` fields; all are stopped after the test."""
    started: list[SimThread] = []

    def start(**config: Any) -> SimThread:
        sim = SimThread(**config).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def fresh_sim(start_sim: Callable[..., SimThread]) -> SimThread:
    """A default endpoint of this test alone (its counters start at zero), unlike the session-wide `sim`."""
    return start_sim()
