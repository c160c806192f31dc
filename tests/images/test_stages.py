"""ImageStage, CaptionStage and AnnotateStage on hand-built Arrow tables (no Ray), against the simulated endpoint.

The catalog is generated: mugs whose titles name no colour, photographed red or blue. Queries ask for a
colour, so any difference between the grades of two such mugs can only come from the pixels.
"""

from __future__ import annotations

import asyncio
import json

import boto3
import polars as pl
import pyarrow as pa
import pytest

from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION
from rae_ray.llm.schemas import ImageCaption
from rae_ray.stages.annotate import LABEL_COLUMNS, AnnotateStage
from rae_ray.stages.captions import CAPTION_COLUMNS, CaptionStage
from rae_ray.stages.common import USAGE_COLUMNS
from rae_ray.stages.guidelines import GuidelineStage
from rae_ray.stages.images import IMAGE_COLUMNS, ImageStage, ImageStageConfig
from rae_ray.stages.prepare import product_hash
from tests.images.conftest import llm_stage_config, product_photo

QUERIES = ["red mug", "blue mug"]


def caption_calls(sim) -> int:
    return sim.stats()["by_schema"].get("image_caption", 0)


@pytest.fixture
def catalog(image_server, s3_server, s3_bucket) -> pl.DataFrame:
    """Six mugs, colour only in the photo: red/blue over HTTP (PNG and JPEG), one blue from S3, one 404."""
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="mugs/m5.png", Body=product_photo("blue", size=(150, 140)))
    rows = [
        ("m1", "Ceramic coffee mug 350 ml", image_server.add("/mugs/m1.png", product_photo("red", size=(130, 120)))),
        ("m2", "Stoneware mug with handle", image_server.add("/mugs/m2.jpg", product_photo("red", (160, 160), "JPEG"))),
        ("m3", "Porcelain mug, dishwasher safe", image_server.add("/mugs/m3.png", product_photo("blue", (140, 120)))),
        ("m4", "Large breakfast mug 500 ml", image_server.add("/mugs/m4.jpg", product_photo("blue", (120, 150), "JPEG"))),
        ("m5", "Enamel camping mug", f"s3://{s3_bucket}/mugs/m5.png"),
        ("m6", "Travel mug with lid", image_server.url("/mugs/gone.png")),
    ]
    return pl.DataFrame(rows, schema=["product_id", "title", "image_url"], orient="row")


PIXEL_COLOUR = {"m1": "red", "m2": "red", "m3": "blue", "m4": "blue", "m5": "blue"}


def image_stage(image_config, s3_server, buckets: list[str] = ()) -> ImageStage:
    return ImageStage(ImageStageConfig(images=image_config(allow_buckets=list(buckets)), s3_endpoint_url=s3_server,
                                       max_concurrent_requests=4))


def pairs_table(catalog: pl.DataFrame, guidelines: pa.Table) -> pl.DataFrame:
    pairs = pl.DataFrame({"query": QUERIES}).join(catalog, how="cross")
    hashes = [product_hash(r) for r in pairs.select("title", "image_url").to_dicts()]
    guides = pl.from_arrow(guidelines).select("query", "guideline_id", "guideline", pl.col("error").alias("guideline_error"))
    return pairs.with_columns(
        pl.Series("product_hash", hashes), pl.lit(None, dtype=pl.String).alias("pair_error")
    ).join(guides, on="query", how="left")


async def annotate(sim, catalog: pl.DataFrame, mode: str, image_config, s3_server) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The stages in the job's order, joined as the job joins them; returns (labels, images or captions)."""
    llm = llm_stage_config(sim.base_url)
    guidelines = await GuidelineStage(llm)(pa.table({"query": QUERIES}))
    pairs = pairs_table(catalog, guidelines)
    side = pl.DataFrame()
    if mode != "text":
        buckets = [url.split("/")[2] for url in catalog["image_url"] if url.startswith("s3://")]  # the catalog's own
        stage = image_stage(image_config, s3_server, buckets)
        images = await stage(pa.table({"image_url": catalog["image_url"].unique().to_list()}))
        await stage.close()
        if mode == "caption":
            side = pl.from_arrow(await CaptionStage(llm)(images))
            pairs = pairs.join(side.select("image_url", "caption_id", "caption", "image_status"), on="image_url", how="left")
        else:
            side = pl.from_arrow(images)
            pairs = pairs.join(side.select("image_url", "image_id", "image_data_url", "image_status"), on="image_url",
                               how="left")
    labels = await AnnotateStage(llm)(pairs.to_arrow())
    return pl.from_arrow(labels), side


def grades(labels: pl.DataFrame) -> dict[tuple[str, str], int]:
    return {(q, p): g for q, p, g in labels.select("query", "product_id", "grade").iter_rows()}


# ---------------------------------------------------------------------------------------------- ImageStage


def test_image_stage_fetches_each_unique_url_once(image_server, image_config, s3_server) -> None:
    url = image_server.add("/stage/once.png", product_photo("green"))
    batch = pa.table({"image_url": [url, None, url, image_server.url("/stage/none.png"), ""]})
    before = image_server.hits("/stage/once.png")
    stage = image_stage(image_config, s3_server)

    async def go() -> pa.Table:
        try:
            return await stage(batch)
        finally:
            await stage.close()

    out = asyncio.run(go())
    assert out.column_names == IMAGE_COLUMNS and out.num_rows == 5
    assert image_server.hits("/stage/once.png") == before + 1
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == ["ok", "none", "ok", "missing", "none"]
    assert rows[0]["image_data_url"].startswith("data:image/jpeg;base64,") and rows[0]["image_width"] == 120
    assert rows[0]["image_id"] == rows[2]["image_id"] and rows[3]["image_error"].startswith("HTTP 404")


def test_image_stage_names_a_missing_column(image_config, s3_server) -> None:
    with pytest.raises(KeyError, match="image_url"):
        asyncio.run(image_stage(image_config, s3_server)(pa.table({"url": ["x"]})))


# ---------------------------------------------------------------------------------------------- CaptionStage


def test_caption_stage_one_call_per_unique_image(sim_thread, image_server, image_config, s3_server) -> None:
    red = product_photo("red", size=(100, 90))
    urls = [image_server.add("/cap/a.png", red), image_server.add("/cap/same-bytes.png", red),
            image_server.add("/cap/b.png", product_photo("blue")), image_server.url("/cap/missing.png"),
            image_server.add("/cap/page.png", b"<html></html>", "text/html")]
    llm = llm_stage_config(sim_thread.base_url, model="sim-vision")

    async def go() -> pa.Table:
        stage = image_stage(image_config, s3_server)
        images = await stage(pa.table({"image_url": urls}))
        await stage.close()
        return await CaptionStage(llm)(images)

    before = caption_calls(sim_thread)
    out = asyncio.run(go())
    assert caption_calls(sim_thread) - before == 2  # red (two URLs, same bytes) and blue; failures make no call
    assert out.column_names == CAPTION_COLUMNS + list(USAGE_COLUMNS)
    rows = out.to_pylist()
    assert [r["image_status"] for r in rows] == ["ok", "ok", "ok", "missing", "not_image"]
    assert rows[0]["caption_id"] == rows[1]["caption_id"] != rows[2]["caption_id"]
    assert [r["llm_calls"] for r in rows] == [1, 0, 1, 0, 0]
    captions = [ImageCaption.model_validate_json(r["caption"]) for r in rows[:3]]
    assert [c.colours[0] for c in captions] == ["red", "red", "blue"]
    assert rows[3]["caption"] is None and rows[3]["caption_id"] is None and "404" in rows[3]["error"]
    assert rows[4]["error"].startswith("not a decodable image")
    assert {r["model"] for r in rows} == {"sim-vision"} and {r["prompt_version"] for r in rows} == {CAPTION_PROMPT_VERSION}
    assert not any(r["cache_hit"] for r in rows)


def test_caption_stage_reuses_a_known_caption(sim_thread, image_server, image_config, s3_server) -> None:
    url = image_server.add("/cap/known.png", product_photo("red", size=(90, 90)))
    known = ImageCaption(product_type="mug", colours=["red"], pattern="solid colour", material="ceramic",
                         visible_text="", details="from the store").model_dump_json()
    llm = llm_stage_config(sim_thread.base_url)

    async def go() -> pa.Table:
        stage = image_stage(image_config, s3_server)
        images = await stage(pa.table({"image_url": [url]}))
        await stage.close()
        return await CaptionStage(llm)(images.append_column("caption", pa.array([known], pa.string())))

    before = caption_calls(sim_thread)
    row = asyncio.run(go()).to_pylist()[0]
    assert caption_calls(sim_thread) == before
    assert row["cache_hit"] and row["caption"] == known and row["llm_calls"] == 0 and row["caption_id"]


# ---------------------------------------------------------------------------------------------- AnnotateStage


def test_grades_depend_on_pixels_in_caption_and_direct_mode(sim_thread, catalog, image_config, s3_server) -> None:
    async def go() -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
        return {mode: await annotate(sim_thread, catalog, mode, image_config, s3_server)
                for mode in ("text", "caption", "direct")}

    before = caption_calls(sim_thread)
    runs = asyncio.run(go())
    assert caption_calls(sim_thread) - before == 5  # one per image fetched; the 404 makes none

    text = grades(runs["text"][0])
    # On text alone the judge cannot tell the mugs apart: every mug gets the same grade for both queries.
    assert len({text[(q, p)] for q in QUERIES for p in PIXEL_COLOUR}) == 1
    for mode in ("caption", "direct"):
        labels = runs[mode][0]
        graded = grades(labels)
        for query in QUERIES:
            wanted = query.split()[0]
            for product, colour in PIXEL_COLOUR.items():
                expected = 2 if colour == wanted else 1
                assert graded[(query, product)] == expected, (mode, query, product, labels.to_dicts())
        status = dict(zip(labels["product_id"], labels["image_status"]))
        assert status == {"m1": "ok", "m2": "ok", "m3": "ok", "m4": "ok", "m5": "ok", "m6": "missing"}
        # m6's image is gone: judged on text alone (like text mode), not lost.
        assert graded[("red mug", "m6")] == text[("red mug", "m6")] and labels["error"].null_count() == labels.height
        assert labels.columns[: len(LABEL_COLUMNS)] == LABEL_COLUMNS
    caption_labels, captions = runs["caption"]
    assert caption_labels.filter(pl.col("product_id") == "m1")["caption_id"].to_list()[0] == \
        captions.filter(pl.col("image_url").str.ends_with("/m1.png"))["caption_id"][0]
    assert caption_labels.filter(pl.col("product_id") == "m6")["caption_id"].null_count() == 2
    direct_labels = runs["direct"][0]
    assert direct_labels["caption_id"].null_count() == direct_labels.height
    assert direct_labels.filter(pl.col("image_status") == "ok")["image_id"].null_count() == 0
    reasons = " ".join(runs["direct"][0].filter(pl.col("product_id") == "m3")["reasoning"].to_list())
    assert "image shows blue" in reasons


def test_text_mode_labels_say_none(sim_thread, catalog) -> None:
    async def go() -> pl.DataFrame:
        llm = llm_stage_config(sim_thread.base_url)
        guidelines = await GuidelineStage(llm)(pa.table({"query": QUERIES}))
        return pl.from_arrow(await AnnotateStage(llm)(pairs_table(catalog, guidelines).to_arrow()))

    labels = asyncio.run(go())
    assert set(labels["image_status"]) == {"none"} and labels["caption_id"].null_count() == labels.height


def test_failed_caption_and_rejected_image_degrade_to_text(sim_thread, catalog) -> None:
    """A null caption (caption mode) and an image the endpoint refuses (direct mode): labelled on text, said so."""
    bad_image = "data:image/jpeg;base64," + "QUFBQQ=="  # base64 of "AAAA": not an image; the endpoint answers 400

    async def go() -> tuple[pl.DataFrame, pl.DataFrame]:
        llm = llm_stage_config(sim_thread.base_url)
        guidelines = await GuidelineStage(llm)(pa.table({"query": ["red mug"]}))
        pairs = pairs_table(catalog.head(2), guidelines).filter(pl.col("query") == "red mug")
        captioned = pairs.with_columns(
            pl.lit(None, dtype=pl.String).alias("caption"), pl.lit("cid").alias("caption_id"), pl.lit("ok").alias("image_status"))
        direct = pairs.with_columns(pl.lit(bad_image).alias("image_data_url"), pl.lit("ok").alias("image_status"))
        stage = AnnotateStage(llm)
        return pl.from_arrow(await stage(captioned.to_arrow())), pl.from_arrow(await stage(direct.to_arrow()))

    captioned, direct = asyncio.run(go())
    assert set(captioned["image_status"]) == {"caption_failed"} and captioned["grade"].null_count() == 0
    assert captioned["caption_id"].null_count() == captioned.height
    assert set(direct["image_status"]) == {"image_rejected"} and direct["grade"].null_count() == 0
    assert direct["error"].null_count() == direct.height and set(direct["llm_calls"]) == {2}


def test_annotate_without_image_columns_keeps_its_output(sim_thread) -> None:
    row = {"query": "mug", "product_id": "p", "product_hash": "h", "pair_error": None, "guideline_id": "g",
           "guideline": json.dumps({"query_intent": "mug", "requirements": [], "grade_definitions": []}),
           "guideline_error": None, "title": "Mug"}
    labels = asyncio.run(AnnotateStage(llm_stage_config(sim_thread.base_url))(pa.Table.from_pylist([row])))
    assert labels.column_names == LABEL_COLUMNS + list(USAGE_COLUMNS)
    assert labels.column("image_status").to_pylist() == ["none"]
