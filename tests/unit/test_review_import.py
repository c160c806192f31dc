"""Review import: a filled review queue becomes human records in the label store, or, with any bad row, nothing."""

from __future__ import annotations

import csv
import io

import polars as pl
import pyarrow as pa
import pytest

from rae_ray.cli import main
from rae_ray.io import InputError
from rae_ray.labelstore.human import HUMAN_KIND, human_key, parse_scale_text
from rae_ray.review_import import import_review

SCALE = "2=highly_relevant;1=acceptable_substitute;0=irrelevant"
HASH_A, HASH_B, HASH_C = "0123456789abcdef0123", "fedcba9876543210fedc", "00112233445566778899"
HEADER = ["priority", "review_reason", "query", "product_id", "product_hash", "title", "judge_grade", "reasoning",
          "scale", "human_grade", "note", "reviewer", "reviewed_at"]


def queue_csv(path, rows: list[dict], header=HEADER) -> str:
    """A review queue as the job writes it (csv quoting, multi-line reasoning), people's columns filled by `rows`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows):
        writer.writerow({"priority": 1, "review_reason": "hard_disagreement", "judge_grade": 0, "title": f"item {i}",
                         "reasoning": "line one\nline two", "scale": SCALE, **row})
    path.write_text(buffer.getvalue())
    return str(path)


def human_records(store) -> pl.DataFrame | None:
    """The store's human table as written (every record), None when the store has none."""
    table = store / HUMAN_KIND
    return pl.read_delta(str(table)) if (table / "_delta_log").exists() else None


GOOD = [
    {"query": "Red Shoes", "product_id": "p1", "product_hash": HASH_A, "human_grade": "2", "note": "clearly red",
     "reviewer": "ana", "reviewed_at": "2026-11-30T14:05:00Z"},
    {"query": "red shoes", "product_id": "p2", "product_hash": HASH_B, "human_grade": " 0.0 "},
    {"query": "tv", "product_id": "t1", "product_hash": HASH_C, "human_grade": ""},  # not reviewed: skipped
]


def test_a_good_file_becomes_human_records(tmp_path):
    store = tmp_path / "store"
    result = import_review(queue_csv(tmp_path / "queue.csv", GOOD), str(store))
    assert (result.imported, result.not_graded) == (2, 1)
    records = human_records(store).sort("product_id")
    assert records["grade"].to_list() == [2, 0]
    assert records["label"].to_list() == ["highly_relevant", "irrelevant"]
    assert records["reviewer"].to_list() == ["ana", None] and records["note"].to_list() == ["clearly red", None]
    assert records["reviewed_at"].to_list() == ["2026-11-30T14:05:00Z", None]
    # keyed by the normalized query and the product's content hash (and the scale's grades): no judge in the key
    assert records["human_key"].to_list() == [human_key("red shoes", HASH_A, [0, 1, 2]), human_key("RED shoes", HASH_B, [2, 1, 0])]
    assert human_key("red shoes", HASH_A, [0, 1, 2]) != human_key("red shoes", HASH_A, [0, 1, 2, 3])


BAD = {  # kind -> (rows, the problem the message must name)
    "unknown pair: empty query": ([{**GOOD[0], "query": " "}], ":2, column query: empty, so the pair is unknown"),
    "unknown pair: no product_hash": ([{**GOOD[0], "product_hash": ""}], ":2, column product_hash: '' is not"),
    "unknown pair: not a hash": ([GOOD[1], {**GOOD[0], "product_hash": "p1"}], ":4, column product_hash: 'p1' is not"),
    "off the scale": ([GOOD[1], {**GOOD[0], "human_grade": "3"}], ":4, column human_grade: 3 is off the scale [0, 1, 2]"),
    "unparsable grade": ([{**GOOD[0], "human_grade": "very relevant"}], ":2, column human_grade: 'very relevant' is not"),
    "fraction": ([{**GOOD[0], "human_grade": "1.5"}], ":2, column human_grade: '1.5' is not an integer grade"),
    "bad scale": ([{**GOOD[0], "scale": "high, low"}], ":2, column scale: 'high, low' is not a scale"),
    "bad reviewed_at": ([{**GOOD[0], "reviewed_at": "yesterday"}], ":2, column reviewed_at: 'yesterday' is not"),
    "one pair, two grades": ([GOOD[0], {**GOOD[0], "query": "red  SHOES", "human_grade": "1"}],
                             ":4, column human_grade: 1, but line 2 grades the same pair"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_row_names_file_line_and_column_and_imports_nothing(tmp_path, kind):
    rows, problem = BAD[kind]
    store = tmp_path / "store"
    path = queue_csv(tmp_path / "queue.csv", [*rows, GOOD[1] | {"product_hash": HASH_C}])  # a good row too
    with pytest.raises(InputError) as raised:
        import_review(path, str(store))
    message = str(raised.value)
    assert "nothing imported" in message and f"{path}{problem}" in message, message
    assert human_records(store) is None


def test_missing_columns_import_nothing(tmp_path):
    store = tmp_path / "store"
    header = [c for c in HEADER if c not in ("product_hash", "scale")]
    path = queue_csv(tmp_path / "queue.csv", GOOD[:1], header=header)
    with pytest.raises(InputError, match=r"queue\.csv:1: missing column\(s\) \['product_hash', 'scale'\]"):
        import_review(path, str(store))
    assert human_records(store) is None


def test_every_problem_is_listed_at_once(tmp_path):
    rows = [{**GOOD[0], "human_grade": "x"}, {**GOOD[1], "query": ""}, {**GOOD[1], "product_hash": HASH_C, "human_grade": "7"}]
    with pytest.raises(InputError, match="3 problem") as raised:
        import_review(queue_csv(tmp_path / "queue.csv", rows), str(tmp_path / "store"))
    assert all(f":{line}, column" in str(raised.value) for line in (2, 4, 6))  # a row spans two lines


def test_cli_exit_codes(tmp_path, capsys):
    good = queue_csv(tmp_path / "good.csv", GOOD)
    assert main(["review", "import", good, "--store", str(tmp_path / "store")]) == 0
    assert "imported 2 human grades" in capsys.readouterr().out
    bad = queue_csv(tmp_path / "bad.csv", [{**GOOD[0], "human_grade": "9"}])
    assert main(["review", "import", bad, "--store", str(tmp_path / "store")]) == 2
    assert "bad.csv:2, column human_grade: 9 is off the scale" in capsys.readouterr().err
    assert human_records(tmp_path / "store").height == 2  # the bad file added nothing


def test_scale_text_parses():
    assert parse_scale_text(SCALE) == {2: "highly_relevant", 1: "acceptable_substitute", 0: "irrelevant"}
    assert parse_scale_text("2;1;0") == {2: None, 1: None, 0: None}
    for bad in ("", "2", "a=b;1", "1;1"):
        with pytest.raises(ValueError):
            parse_scale_text(bad)


def test_human_records_become_label_rows_like_the_judge_s():
    from rae_ray.labelstore.cached import LABEL_SPEC, output_schema
    from rae_ray.labelstore.human import HUMAN_LOOKUP, HUMAN_PREFIX, human_labels, with_source

    looked = pa.table({"query": ["q"], "product_id": ["p"], "product_hash": [HASH_A], "label_key": ["k"],
                       "guideline_id": ["g"], "examples": pa.nulls(1, pa.string()),
                       **{HUMAN_PREFIX + name: pa.array([value], HUMAN_LOOKUP[name]) for name, value in (
                           ("accepted_at", "t"), ("grade", 2), ("label", "highly_relevant"), ("note", "red, as asked"),
                           ("reviewer", "ana"), ("reviewed_at", None))}})
    rows = human_labels(looked, output_schema(LABEL_SPEC))
    assert rows.schema.equals(with_source(output_schema(LABEL_SPEC).empty_table(), "llm").schema)  # they union
    (row,) = rows.to_pylist()
    assert (row["grade"], row["label"], row["reasoning"], row["source"]) == (2, "highly_relevant", "red, as asked", "human")
    assert row["model"] is None and row["llm_calls"] == 0 and row["error"] is None and row["label_key"] == "k"


def test_the_newest_import_is_the_record_the_store_keeps():
    from rae_ray.labelstore.delta import STORED_AT, one_per_key
    from rae_ray.labelstore.human import HUMAN_KEY

    records = pl.DataFrame({HUMAN_KEY: ["k", "k"], STORED_AT: ["2026-12-01T09:00:00", "2026-11-30T10:00:00"],
                            "grade": [0, 2], "note": ["new", "old"]})
    # The lookup's one record per key: for people's grades the last stored, whatever the files' order.
    for frame in (records, records.reverse()):
        assert one_per_key(frame, HUMAN_KEY)["note"].to_list() == ["new"]
    assert one_per_key(records.rename({HUMAN_KEY: "label_key"}), "label_key")["note"].to_list() == ["old"]
