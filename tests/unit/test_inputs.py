import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rae_ray.inputs import inspect_catalog, inspect_log, log_columns, require_product_title
from rae_ray.io import InputError, Storage, resolve_uri

LOG = {"query": ["a"], "ranker": ["r"], "rank": [1], "product_id": ["p"]}


def write(tmp_path, name, columns):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_bundled_sample_is_valid():
    infos = inspect_log([(None, "sample:search_log.parquet")], Storage())
    assert infos[0].num_rows == 3822
    assert log_columns(infos, with_catalog=True) == ["query", "ranker", "rank", "product_id", "query_count"]
    assert inspect_catalog("sample:products.parquet", Storage()).num_rows == 2517


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "log.parquet", {k: v for k, v in LOG.items() if k != "ranker"})
    with pytest.raises(InputError) as error:
        inspect_log([(None, path)], Storage())
    assert "log.parquet" in str(error.value) and "ranker" in str(error.value)


def test_wrong_type_names_column_and_type(tmp_path):
    path = write(tmp_path, "log.parquet", {**LOG, "rank": ["first"]})
    with pytest.raises(InputError, match=r"column 'rank' has type string, expected integer"):
        inspect_log([(None, path)], Storage())


def test_empty_log_fails(tmp_path):
    path = write(tmp_path, "empty.parquet", {k: pa.array([], pa.int64() if k == "rank" else pa.string()) for k in LOG})
    with pytest.raises(InputError, match="no rows"):
        inspect_log([(None, path)], Storage())


def test_corrupt_parquet_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(InputError, match="broken.parquet: not a readable Parquet file"):
        inspect_log([(None, str(path))], Storage())


def test_folder_of_files_and_missing_path(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write(folder, "a.parquet", LOG)
    write(folder, "b.parquet", LOG)
    info = inspect_log([(None, str(folder))], Storage())[0]
    assert len(info.files) == 2 and info.num_rows == 2
    with pytest.raises(InputError, match="not found"):
        inspect_log([(None, str(tmp_path / "nothing"))], Storage())


def test_log_without_catalog_needs_titles(tmp_path):
    infos = inspect_log([(None, write(tmp_path, "log.parquet", LOG))], Storage())
    with pytest.raises(InputError, match="no 'title' column"):
        require_product_title(infos)


def test_catalog_attributes_may_be_a_map(tmp_path):
    attributes = pa.array([[("colour", "red")]], pa.map_(pa.string(), pa.string()))
    path = write(tmp_path, "cat.parquet", {"product_id": ["p"], "title": ["t"], "attributes": attributes})
    assert inspect_catalog(path, Storage()).columns == ["product_id", "title", "attributes"]


def test_unknown_sample_and_scheme():
    with pytest.raises(InputError, match="bundled sample"):
        resolve_uri("sample:nope.parquet")
    with pytest.raises(InputError, match="unsupported URI scheme"):
        resolve_uri("gs://bucket/x")


def test_per_ranker_logs_need_no_ranker_column(tmp_path):
    no_ranker = {k: v for k, v in LOG.items() if k != "ranker"}
    infos = inspect_log([("v1", write(tmp_path, "v1.parquet", no_ranker)), ("v2", write(tmp_path, "v2.parquet", no_ranker))],
                        Storage())
    assert [i.ranker for i in infos] == ["v1", "v2"]
    assert log_columns(infos, with_catalog=True) == ["query", "ranker", "rank", "product_id"]
    with pytest.raises(InputError, match="ranker"):
        inspect_log([(None, write(tmp_path, "plain.parquet", no_ranker))], Storage())
