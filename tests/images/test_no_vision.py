"""An endpoint whose model takes no images (llama.cpp without its mmproj: HTTP 500): the stages ask it once, then
judge on text; no retries, no lost pairs. Stages on hand-built Arrow tables, no Ray."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator

import pyarrow as pa
import pytest

from rae_ray.images import image_id
from rae_ray.sim.process import SimThread
from rae_ray.stages.annotate import AnnotateStage
from rae_ray.stages.captions import CaptionStage
from rae_ray.stages.guidelines import GuidelineStage
from tests.images.conftest import llm_stage_config, product_photo

NO_IMAGES = "the endpoint takes no images (model sim-judge): image input is not supported"


@pytest.fixture(scope="module")
def blind_sim() -> Iterator[SimThread]:
    with SimThread(vision=False) as sim:
        yield sim


def data_url(colour: str, size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(product_photo(colour, (size, size))).decode()


def image_rows(urls: list[str]) -> pa.Table:
    """ImageStage output: every fetch succeeded."""
    return pa.Table.from_pylist([
        {"image_url": f"http://shop.test/{i}.png", "image_id": image_id(url), "image_status": "ok",
         "image_error": None, "image_data_url": url} for i, url in enumerate(urls)])


def pair_rows(guideline: dict, urls: list[str | None]) -> pa.Table:
    """Direct mode's pairs (one without an image), with their guideline and image columns."""
    return pa.Table.from_pylist([
        {"query": "red mug", "product_id": f"p{i}", "product_hash": f"h{i}", "pair_error": None, "guideline_id": "g",
         "guideline": json.dumps(guideline), "guideline_error": None, "title": f"Ceramic mug {i}",
         "image_url": f"http://shop.test/{i}.png" if url else None, "image_data_url": url,
         "image_status": "ok" if url else "none"} for i, url in enumerate(urls)])


def test_direct_mode_asks_once_then_judges_on_text(blind_sim, caplog) -> None:
    async def go() -> tuple[list[dict], list[dict], list[dict]]:
        llm = llm_stage_config(blind_sim.base_url)
        guideline = json.loads((await GuidelineStage(llm)(pa.table({"query": ["red mug"]}))).column("guideline")[0].as_py())
        stage = AnnotateStage(llm)
        first = await stage(pair_rows(guideline, [data_url("red", 100), data_url("blue", 110), None]))
        blind_sim.reset_stats()
        second = await stage(pair_rows(guideline, [data_url("red", 120), data_url("blue", 130)]))
        stats = blind_sim.stats()
        return first.to_pylist(), second.to_pylist(), [stats]

    with caplog.at_level(logging.WARNING, logger="rae_ray.stages.annotate"):
        first, second, (stats,) = asyncio.run(go())
    assert [r["image_status"] for r in first] == ["no_vision", "no_vision", "none"]
    assert [r["image_status"] for r in second] == ["no_vision", "no_vision"]
    assert all(r["grade"] is not None and r["error"] is None and r["image_id"] is None for r in first + second)
    # One refused request per image of the first batch (max_retries 1, yet no retry), plus its text judgement.
    assert [r["llm_calls"] for r in first] == [2, 2, 1]
    # Later pairs go text-only without a failed call first.
    assert [r["llm_calls"] for r in second] == [1, 1] and stats["by_status"] == {"200": 2}
    warnings = [r for r in caplog.records if "takes no images" in r.getMessage()]
    assert len(warnings) == 1 and NO_IMAGES in warnings[0].getMessage()


def test_captions_stop_at_the_first_refusal_and_the_pairs_fall_back_to_text(blind_sim) -> None:
    async def go() -> tuple[list[dict], list[dict], int, list[dict]]:
        llm = llm_stage_config(blind_sim.base_url)
        stage = CaptionStage(llm)
        blind_sim.reset_stats()
        first = await stage(image_rows([data_url("red", 100), data_url("blue", 100)]))
        second = await stage(image_rows([data_url("green", 100)]))
        requests = blind_sim.stats()["requests_total"]
        guideline = json.loads((await GuidelineStage(llm)(pa.table({"query": ["red mug"]}))).column("guideline")[0].as_py())
        pairs = pair_rows(guideline, [data_url("red", 100)]).drop_columns(["image_data_url"])
        captions = first.slice(0, 1)
        pairs = pairs.append_column("caption", captions.column("caption")).append_column(
            "caption_id", captions.column("caption_id"))
        labels = await AnnotateStage(llm)(pairs)
        return first.to_pylist(), second.to_pylist(), requests, labels.to_pylist()

    first, second, requests, labels = asyncio.run(go())
    assert requests == 2  # the two images of the first batch, once each; none for the second batch
    for row in first + second:
        assert row["caption"] is None and row["caption_id"] is None
        assert row["error"].startswith(NO_IMAGES)
    assert [r["llm_calls"] for r in first + second] == [1, 1, 0]
    assert labels[0]["image_status"] == "caption_failed" and labels[0]["grade"] is not None
