import pyarrow as pa

from rae_ray.labelstore.keys import guideline_id, normalize_query
from rae_ray.stages.prepare import (
    check_log_rows, invalid_rows, normalize_products, pair_problems, product_hash, select_rows, unique_pairs,
)


def log_batch():
    return pa.table({
        "query": ["shoe", "shoe", "shoe", None, " ", "shoe", "shoe"],
        "ranker": ["a", "a", "b", "a", "a", None, "b"],
        "rank": [1, 2, 1, 1, 1, 1, 0],
        "product_id": ["p1", "p2", "p1", "p3", "p4", "p5", "p6"],
        "title": ["Shoe one", "Shoe two", "Shoe one", "x", "y", "z", "w"],
    })


def test_check_log_rows_gives_a_reason_per_bad_row():
    checked = check_log_rows(log_batch())
    assert checked.column("input_error").to_pylist() == [
        None, None, None, "null query", "empty query", "null ranker", "rank below 1"]
    errors = invalid_rows(checked)
    assert errors.num_rows == 4
    assert set(errors.column("stage").to_pylist()) == {"input"}


def test_select_rows_cuts_at_k_and_rankers():
    checked = check_log_rows(log_batch())
    assert select_rows(checked, None, 1, None).num_rows == 2
    assert select_rows(checked, ["b"], 10, None).column("product_id").to_pylist() == ["p1"]
    assert select_rows(checked, None, 10, ["nope"]).num_rows == 0


def test_unique_pairs_dedupes_across_rankers():
    rows = select_rows(check_log_rows(log_batch()), None, 10, None)
    pairs = unique_pairs(rows)
    assert pairs.num_rows == 2
    by_id = {r["product_id"]: r for r in pairs.to_pylist()}
    assert by_id["p1"]["n_rankers"] == 2 and by_id["p1"]["best_rank"] == 1
    assert by_id["p2"]["n_rankers"] == 1 and by_id["p2"]["best_rank"] == 2
    assert by_id["p1"]["product_hash"] == product_hash({"title": "Shoe one"})


def test_product_hash_changes_with_content():
    assert product_hash({"title": "A"}) != product_hash({"title": "B"})
    assert product_hash({"title": "A", "brand": None}) == product_hash({"title": "A"})


def test_pair_problems_unknown_product_and_no_text():
    batch = pa.table({
        "query": ["q", "q", "q"], "product_id": ["1", "2", "3"], "title": ["t", None, " "],
        "brand": [None, None, None], "in_catalog": [True, None, True],
    })
    reasons = pair_problems(batch).column("pair_error").to_pylist()
    assert reasons[0] is None
    assert reasons[1] == "unknown product_id: not in the catalog"
    assert reasons[2].startswith("product has no text")


def test_normalize_products_turns_maps_into_json_text():
    attributes = pa.array([[("colour", "red")]], pa.map_(pa.string(), pa.string()))
    table = normalize_products(pa.table({"product_id": [7], "title": ["t"], "attributes": attributes}), mark_catalog=True)
    assert table.column("attributes").to_pylist() == ['{"colour": "red"}']
    assert table.column("product_id").to_pylist() == ["7"]
    assert table.column("in_catalog").to_pylist() == [True]


def test_guideline_id_depends_on_what_decides_a_guideline():
    scale = [{"grade": 1, "name": "x", "description": ""}]
    base = guideline_id("Red  Shoe", "m", "v1", scale)
    assert base == guideline_id("red shoe", "m", "v1", scale)
    assert base != guideline_id("red shoe", "m2", "v1", scale)
    assert base != guideline_id("red shoe", "m", "v2", scale)
    assert normalize_query("  ＲＥＤ   Shoe ") == "red shoe"


def test_without_guidelines_ids_are_null_and_label_keys_still_tell_queries_apart():
    from rae_ray.labelstore.keys import add_guideline_ids, add_label_keys, label_key

    pairs = pa.table({"query": ["Red Shoe", "red shoe", "blue shoe"], "product_hash": ["h", "h", "h"]})
    scale = [{"grade": 1, "name": "yes", "description": ""}, {"grade": 0, "name": "no", "description": ""}]
    off = add_guideline_ids(pairs, None, "guideline-v2", scale)
    assert off.column("guideline_id").null_count == 3
    keys = add_label_keys(off, "judge", "annotate-v2-noguideline", scale, "text").column("label_key").to_pylist()
    assert keys[0] == keys[1] != keys[2]  # the normalized query stands in for the guideline
    on = add_guideline_ids(pairs, "writer", "guideline-v2", scale)
    with_ids = add_label_keys(on, "judge", "annotate-v1", scale, "text").column("label_key").to_pylist()
    ids = on.column("guideline_id").to_pylist()
    assert with_ids == [label_key(g, "h", "judge", "annotate-v1", scale) for g in ids]
    assert not set(with_ids) & set(keys)


def test_labels_judged_without_the_image_their_key_names_are_not_stored(tmp_path):
    import polars as pl

    from rae_ray.io import Storage
    from rae_ray.labelstore import publish_shard

    batch = pa.table({"label_key": ["a", "b", "c", "d"], "grade": [2, 1, None, 0],
                      "error": [None, None, "HTTP 400", None],
                      "image_status": ["ok", "no_vision", "ok", "image_rejected"]})
    returned = publish_shard(batch, str(tmp_path), Storage(), "run", unstored_image_status=("no_vision", "image_rejected"))
    assert returned.equals(batch)  # the batch goes on unchanged
    stored = pl.read_delta(str(tmp_path))
    assert stored["label_key"].to_list() == ["a"]
