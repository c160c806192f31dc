"""`rae-ray metrics`: the metrics step alone, fed by the chorus human labels (no Ray, no LLM)."""

import polars as pl
import pytest

from rae_ray.cli import main
from rae_ray.io import InputError
from rae_ray.label_files import parse_grade_map

# ../shared/data/chorus/README.md, computed from the human final_rating.
README_TABLE = {"random-v0": (0.5413, 0.4533), "bm25-v1": (0.7195, 0.5496), "tuned-v2": (0.8476, 0.6030)}


def test_metrics_command_reproduces_the_chorus_readme(chorus, tmp_path, capsys):
    code = main([
        "metrics", "--log", str(chorus / "search_log.parquet"), "--labels", str(chorus / "judgments.parquet"),
        "--label-column", "final_rating", "--grade-map", "3=2,2=1,1=1,0=0", "--out", str(tmp_path),
    ])
    assert code == 0
    rankers = pl.read_parquet(tmp_path / "metrics" / "rankers.parquet").filter(pl.col("k") == 10)
    for ranker, (ndcg, precision) in README_TABLE.items():
        row = rankers.filter(pl.col("ranker") == ranker)
        assert round(row.filter(pl.col("metric") == "ndcg")["value"][0], 4) == ndcg
        assert round(row.filter(pl.col("metric") == "precision")["value"][0], 4) == precision
    printed = capsys.readouterr().out
    assert "tuned-v2" in printed and "0.8476" in printed


def test_grade_map_parsing_and_errors(chorus, tmp_path):
    assert parse_grade_map("3=2,2=1,1=1,0=0") == {3: 2, 2: 1, 1: 1, 0: 0}
    with pytest.raises(InputError, match="LABEL=GRADE"):
        parse_grade_map("3:2")
    with pytest.raises(InputError, match=r"values \[3\] that --grade-map does not map"):
        from rae_ray.offline import run_metrics

        run_metrics(str(chorus / "search_log.parquet"), str(chorus / "judgments.parquet"), "final_rating",
                    {0: 0, 1: 1, 2: 1}, str(tmp_path))


def test_missing_label_column_is_named(chorus, tmp_path, capsys):
    code = main(["metrics", "--log", str(chorus / "search_log.parquet"), "--labels", str(chorus / "judgments.parquet"),
                 "--label-column", "nope", "--out", str(tmp_path)])
    assert code == 2
    assert "missing column 'nope'" in capsys.readouterr().err


def test_ranker_table_without_confidence_intervals():
    """metrics.bootstrap = 0 leaves the bounds empty (null or NaN): the table says so instead of failing."""
    from rae_ray.table import ranker_table

    rows = [{"ranker": r, "k": 10, "metric": "ndcg", "value": v, "ci_low": low, "ci_high": high, "n_queries": 3}
            for r, v, low, high in (("a", 0.5, None, None), ("b", 0.75, float("nan"), float("nan")), ("c", 0.25, 0.1, 0.4))]
    table = ranker_table(pl.DataFrame(rows), 10)
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["b", "a", "c"]
    assert "0.7500 [no CI]" in lines[2] and "0.5000 [no CI]" in lines[3] and "0.2500 [0.100, 0.400]" in lines[4]
