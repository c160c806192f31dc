"""Input contracts: check the log and catalog from Parquet metadata, before any row is read or any call made."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from rae_ray.io import InputError, Storage, resolve_uri

PRODUCT_COLUMNS = ("title", "brand", "category", "description", "attributes", "image_url")

_STRING = "string"
_INTEGER = "integer"
_TEXT_OR_MAP = "JSON text, map or struct"

LOG_REQUIRED = {"query": _STRING, "ranker": _STRING, "rank": _INTEGER, "product_id": _STRING}
LOG_OPTIONAL = {"query_count": _INTEGER, "locale": _STRING, **{c: _STRING for c in PRODUCT_COLUMNS}, "attributes": _TEXT_OR_MAP}
CATALOG_REQUIRED = {"product_id": _STRING, "title": _STRING}
CATALOG_OPTIONAL = {c: _STRING for c in PRODUCT_COLUMNS if c != "title"} | {"attributes": _TEXT_OR_MAP}


def _type_ok(dtype: pa.DataType, kind: str) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if kind == _STRING:
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)
    if kind == _INTEGER:
        return pa.types.is_integer(dtype)
    return _type_ok(dtype, _STRING) or pa.types.is_map(dtype) or pa.types.is_struct(dtype)


@dataclass
class TableInfo:
    """What the metadata says about one input (a file or a folder of files)."""

    uri: str
    files: list[str]
    num_rows: int
    columns: list[str]
    schema: pa.Schema = field(repr=False)
    ranker: str | None = None  # a per-ranker log: every row belongs to this ranker


def inspect_input(
    uri: str, storage: Storage, role: str, required: dict[str, str], optional: dict[str, str]
) -> TableInfo:
    """Check every file's columns and types; fail naming file and column. Reads footers only."""
    resolved = resolve_uri(uri)
    fs, _ = storage.fs(resolved)
    files = storage.parquet_files(resolved)
    total = 0
    first_schema: pa.Schema | None = None
    all_null: set[str] = set()
    for path in files:
        shown = path if not resolved.startswith("s3://") else f"s3://{path}"
        try:
            with fs.open_input_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
        except (pa.ArrowInvalid, OSError) as error:
            if fs.get_file_info(path).size == 0:
                raise InputError(f"{role} file {shown}: the file is empty (0 bytes), not a Parquet file") from None
            raise InputError(f"{role} file {shown}: not a readable Parquet file ({error})") from None
        names = set(schema.names)
        missing = [c for c in required if c not in names]
        if missing:
            raise InputError(
                f"{role} file {shown}: missing required column(s) {', '.join(missing)} "
                f"(has: {', '.join(schema.names)})"
            )
        for column, kind in {**optional, **required}.items():
            if column not in names:
                continue
            dtype = schema.field(column).type
            if pa.types.is_null(dtype) and column in optional and column not in required:
                all_null.add(column)  # e.g. pandas writes an all-None column as type null: nothing to read
            elif not _type_ok(dtype, kind):
                note = " (every value is null)" if pa.types.is_null(dtype) else ""
                raise InputError(f"{role} file {shown}: column '{column}' has type {dtype}{note}, expected {kind}")
        if first_schema is None:
            first_schema = schema
        total += metadata.num_rows
    if total == 0:
        raise InputError(f"{role} {uri}: no rows ({len(files)} file(s), all empty)")
    # Optional columns that are entirely null (type null) are treated as absent.
    columns = [c for c in first_schema.names if (c in required or c in optional) and c not in all_null]
    return TableInfo(uri=resolved, files=files, num_rows=total, columns=columns, schema=first_schema)


def inspect_log(sources: list[tuple[str | None, str]], storage: Storage) -> list[TableInfo]:
    """Check every log input; a per-ranker log (ranker given) needs no ranker column."""
    infos = []
    for ranker, uri in sources:
        required = {k: v for k, v in LOG_REQUIRED.items() if not (ranker and k == "ranker")}
        info = inspect_input(uri, storage, "search log", required, LOG_OPTIONAL)
        info.ranker = ranker
        infos.append(info)
    return infos


def inspect_catalog(uri: str, storage: Storage) -> TableInfo:
    return inspect_input(uri, storage, "product catalog", CATALOG_REQUIRED, CATALOG_OPTIONAL)


def log_columns(infos: list[TableInfo], with_catalog: bool) -> list[str]:
    """Columns read from the log: required ones, plus those optional ones every log file has."""
    common = set(infos[0].columns) | ({"ranker"} if infos[0].ranker else set())
    for info in infos[1:]:
        common &= set(info.columns) | ({"ranker"} if info.ranker else set())
    wanted = list(LOG_REQUIRED) + ["query_count", "locale"]
    if not with_catalog:
        wanted += list(PRODUCT_COLUMNS)
    return [c for c in wanted if c in common]


def require_product_title(infos: list[TableInfo]) -> None:
    """Without a catalog the log itself must carry the product title."""
    for info in infos:
        if "title" not in info.columns:
            raise InputError(
                f"search log {info.uri}: no product catalog given and the log has no 'title' column; "
                "set input.catalog or add product columns (title, brand, description, ...) to the log"
            )
