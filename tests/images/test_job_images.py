"""The whole job with images, on the shared local Ray: grades follow the pixels in caption and direct mode."""

from __future__ import annotations

import json

import boto3
import polars as pl
import pytest

from rae_ray.job import run
from rae_ray.config import config_from_dict
from rae_ray.llm.protocol import NO_IMAGES_ERROR
from tests.helpers import base_config, read_output, stored_records
from tests.images.conftest import product_photo

pytestmark = pytest.mark.integration

# product -> colour of its photo (None: the photo is gone, a 404); titles never name a colour. m7's URL serves the
# very bytes of m1's photo: six fetched URLs, five unique images.
PHOTOS = {"m1": "red", "m2": "blue", "m3": "red", "m4": "blue", "m5": "blue", "m6": None, "m7": "red"}
SAME_IMAGE = {"m7": "m1"}
QUERIES = ["red mug", "blue mug"]


@pytest.fixture
def inputs(tmp_path, image_server, s3_server, s3_bucket):
    """Catalog (five photos over HTTP, one of them at two URLs, one from the moto bucket, one 404) and a log of
    two rankers."""
    boto3.client("s3", endpoint_url=s3_server).put_object(
        Bucket=s3_bucket, Key="mugs/m5.png", Body=product_photo("blue", size=(140, 150)))
    rows, photos = [], {}
    for i, (product, colour) in enumerate(PHOTOS.items()):
        if product == "m5":
            url = f"s3://{s3_bucket}/mugs/m5.png"
        elif colour is None:
            url = image_server.url(f"/job/{product}-gone.png")
        else:
            photos[product] = photos.get(SAME_IMAGE.get(product)) or product_photo(colour, (110 + 7 * i, 120), "JPEG")
            url = image_server.add(f"/job/{product}.jpg", photos[product], "image/jpeg")
        rows.append({"product_id": product, "title": f"Ceramic mug, model {i + 1}", "image_url": url})
    pl.DataFrame(rows).write_parquet(tmp_path / "catalog.parquet")
    log = [{"query": q, "ranker": r, "rank": rank, "product_id": p}
           for q in QUERIES for r, order in (("a", list(PHOTOS)), ("b", list(reversed(PHOTOS))))
           for rank, p in enumerate(order, 1)]
    pl.DataFrame(log).write_parquet(tmp_path / "log.parquet")
    return tmp_path


def expected_grade(query: str, product: str, text_grade: int) -> int:
    colour = PHOTOS[product]
    return text_grade if colour is None else (2 if query.startswith(colour) else 1)


def test_grades_follow_the_pixels_in_caption_and_direct_mode(ray_local, sim, inputs, s3_bucket):
    labels_by_mode = {}
    for mode in ("caption", "direct"):
        config = base_config(sim.base_url, inputs / f"out-{mode}", run_id=mode,
                             input={"log": str(inputs / "log.parquet"), "catalog": str(inputs / "catalog.parquet")},
                             images={"mode": mode, "allow_hosts": ["127.0.0.1"], "allow_buckets": [s3_bucket],
                                     "timeout_s": 5})
        config["llm"]["captions"] = {"model": "sim-vision"}
        # One image per batch: a copy of an image in another batch must still not be captioned again.
        config.setdefault("compute", {})["captions"] = {"batch_size": 1, "max_actors": 2}
        before = sim.stats()["by_schema"].get("image_caption", 0)
        run(config_from_dict(config))
        caption_calls = sim.stats()["by_schema"].get("image_caption", 0) - before
        root = inputs / f"out-{mode}" / mode
        labels = read_output(root, "labels")
        labels_by_mode[mode] = labels
        assert labels.height == len(QUERIES) * len(PHOTOS)
        status = dict(zip(labels["product_id"], labels["image_status"]))
        assert status == {p: "ok" if c else "missing" for p, c in PHOTOS.items()}
        assert labels["grade"].null_count() == 0 and labels["error"].null_count() == labels.height
        text_grade = labels.filter(pl.col("product_id") == "m6")["grade"][0]  # judged on text alone
        for query, product, grade in labels.select("query", "product_id", "grade").iter_rows():
            assert grade == expected_grade(query, product, text_grade), (mode, query, product)

        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["images"]["by_status"] == {"ok": 6, "missing": 1}
        errors = read_output(root, "errors").filter(pl.col("stage") == "images")
        assert errors.height == 1 and "404" in errors["reason"][0]
        if mode == "caption":
            assert caption_calls == 5 == manifest["llm_calls"]["captions"]  # one per unique image
            captions = read_output(root, "captions")
            assert captions.height == len(PHOTOS) and captions["caption"].null_count() == 1
            gone = captions.filter(pl.col("caption").is_null()).row(0, named=True)  # m6: its fetch failed
            assert gone["image_status"] == "missing" and "404" in gone["error"] and gone["caption_id"] is None
            assert captions.filter(pl.col("caption").is_not_null())["error"].null_count() == len(PHOTOS) - 1
            by_product = dict(zip(labels["product_id"], labels["caption_id"]))
            assert by_product["m7"] == by_product["m1"] is not None
            assert set(labels.filter(pl.col("image_status") == "ok")["caption_id"]) <= set(captions["caption_id"])
        else:
            assert caption_calls == 0
            assert labels["caption_id"].null_count() == labels.height


def run_without_vision(inputs, s3_bucket, folder: str, mode: str, **compute):
    """The job in `mode` against a simulated endpoint whose model takes no images; returns its folder and /stats."""
    from rae_ray.sim.process import SimProcess

    with SimProcess(vision=False) as blind:
        config = base_config(blind.base_url, inputs / folder, run_id="blind",
                             input={"log": str(inputs / "log.parquet"), "catalog": str(inputs / "catalog.parquet")},
                             images={"mode": mode, "allow_hosts": ["127.0.0.1"], "allow_buckets": [s3_bucket],
                                     "timeout_s": 5})
        config["llm"]["captions"] = {"model": "sim-vision"}
        config["llm"]["endpoints"]["default"]["max_retries"] = 6
        config["compute"].update(compute)
        run(config_from_dict(config))
        return inputs / folder / "blind", blind.stats()


def test_direct_mode_against_an_endpoint_without_vision(ray_local, inputs, s3_bucket, capsys):
    """llama.cpp without its mmproj answers an image 500: every pair is still labelled, on text, in a few calls."""
    # One actor, one batch of 4 pairs at a time: it learns from its first batch, the rest go text-only.
    _, stats = run_without_vision(inputs, s3_bucket, "out-blind", "direct",
                                  annotate={"batch_size": 4, "max_actors": 1, "max_concurrent_batches": 1})
    labels = read_output(inputs / "out-blind" / "blind", "labels")
    pairs, with_image = len(QUERIES) * len(PHOTOS), len(QUERIES) * (len(PHOTOS) - 1)
    assert labels.height == pairs and labels["grade"].null_count() == 0 and labels["error"].null_count() == pairs
    status = dict(zip(labels["product_id"], labels["image_status"]))
    assert status == {p: "no_vision" if c else "missing" for p, c in PHOTOS.items()}
    # Refused at most once per pair of the first batch, never retried; then one call a pair. Without that: each of
    # the 12 pairs with an image sent 7 times (max_retries 6), and still not labelled.
    assert stats["by_status"].get("500", 0) <= 4 and stats["requests_total"] <= len(QUERIES) + pairs + 4
    manifest = json.loads((inputs / "out-blind" / "blind" / "manifest.json").read_text())
    assert manifest["labels_by_image_status"] == {"no_vision": with_image, "missing": len(QUERIES)}
    assert (f"model sim-judge takes no images: {with_image} pairs judged on text (image_status no_vision)"
            in capsys.readouterr().err)
    # A label judged without the image its key names is not stored: a later run that can send the image must not
    # take it from the store. Only the pairs without an image were stored.
    stored = stored_records(inputs / "out-blind" / "_store" / "labels")
    assert stored.height == len(QUERIES)
    assert set(stored["label_key"]) == set(labels.filter(pl.col("image_status") == "missing")["label_key"])


def test_caption_mode_against_an_endpoint_without_vision(ray_local, inputs, s3_bucket, capsys):
    """A vision model that takes no images: no caption, every pair judged on text, and the console says why once."""
    root, stats = run_without_vision(inputs, s3_bucket, "out-blind-captions", "caption")
    labels = read_output(root, "labels")
    assert labels.height == len(QUERIES) * len(PHOTOS) and labels["grade"].null_count() == 0
    status = dict(zip(labels["product_id"], labels["image_status"]))
    assert status == {p: "caption_failed" if c else "missing" for p, c in PHOTOS.items()}
    captions = read_output(root, "captions").filter(pl.col("image_status") == "ok")
    assert captions["caption"].null_count() == captions.height
    assert captions["error"].str.starts_with(f"{NO_IMAGES_ERROR} (model sim-vision)").all()
    unique_images = len(PHOTOS) - 1 - len(SAME_IMAGE)  # m6 has no photo; m7 shows m1's
    assert 1 <= stats["by_status"].get("500", 0) <= unique_images  # never retried: at most one call per image
    assert (f"model sim-vision takes no images: {unique_images} images not described; their pairs are judged on "
            "text" in capsys.readouterr().err)


REFUSED = {"r1": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # the cloud metadata address
           "r2": "file:///etc/passwd", "r3": "http://169.254.169.254/computeMetadata/v1/"}


@pytest.mark.parametrize("urls", ["refused", "none"])
def test_pairs_are_judged_on_text_when_no_image_can_be_had(ray_local, sim, tmp_path, urls):
    """Every image refused (or no product with an image at all): no image reaches the judge, every pair is still
    judged on its text, its label says why, and the run succeeds in caption and in direct mode."""
    catalog = pl.DataFrame({"product_id": list(REFUSED), "title": ["Red ceramic mug", "Blue mug", "Mug rack"],
                            "image_url": list(REFUSED.values()) if urls == "refused" else [None] * len(REFUSED)},
                           schema={"product_id": pl.String, "title": pl.String, "image_url": pl.String})
    catalog.write_parquet(tmp_path / "catalog.parquet")
    pl.DataFrame([{"query": q, "ranker": "a", "rank": rank, "product_id": p}
                  for q in QUERIES for rank, p in enumerate(REFUSED, 1)]).write_parquet(tmp_path / "log.parquet")
    for mode in ("caption", "direct"):
        config = base_config(sim.base_url, tmp_path / f"out-{mode}", run_id=mode,
                             input={"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")},
                             images={"mode": mode})
        config["llm"]["captions"] = {"model": "sim-vision"}
        result = run(config_from_dict(config))
        labels = read_output(tmp_path / f"out-{mode}" / mode, "labels")
        assert labels.height == len(QUERIES) * len(REFUSED), mode
        assert labels["grade"].null_count() == 0 and labels["error"].null_count() == labels.height, mode
        expected = "refused" if urls == "refused" else "none"
        assert set(labels["image_status"]) == {expected}, mode
        assert labels["caption_id"].null_count() == labels["image_id"].null_count() == labels.height
        assert result.manifest["status"] == "succeeded" and result.manifest["labelled"] == labels.height
        if urls == "refused":
            assert result.manifest["images"]["by_status"] == {"refused": len(REFUSED)}
            errors = read_output(tmp_path / f"out-{mode}" / mode, "errors").filter(pl.col("stage") == "images")
            assert errors.height == len(REFUSED) and errors["reason"].str.contains("169.254.169.254|scheme").all()
        if mode == "caption":
            assert result.manifest["llm_calls"]["captions"] == 0
