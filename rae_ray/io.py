"""URIs, filesystems and the run folder layout: the edges where bytes come in and go out.

A URI is a local path, `s3://bucket/key`, or `sample:NAME` (a file of the bundled chorus sample). S3 uses the
standard AWS credential chain; an S3-compatible endpoint comes from config or from `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`. Filesystems are passed explicitly to pyarrow and Ray Data, so workers never depend on
environment variables being set before they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SAMPLE_SCHEME = "sample:"


class InputError(ValueError):
    """Input that cannot be evaluated; the message names the file and column."""


def sample_dir() -> Path:
    return Path(str(resources.files("rae_ray") / "data" / "chorus"))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def resolve_uri(uri: str) -> str:
    """Absolute local path, `s3://...` unchanged, `sample:NAME` -> the bundled file."""
    if uri.startswith(SAMPLE_SCHEME):
        path = sample_dir() / uri[len(SAMPLE_SCHEME):]
        if not path.exists():
            raise InputError(f"{uri}: no such file in the bundled sample ({sorted(p.name for p in sample_dir().iterdir())})")
        return str(path)
    if is_s3(uri):
        return uri.rstrip("/") if uri.count("/") > 3 else uri
    if "://" in uri:
        raise InputError(f"{uri}: unsupported URI scheme (use a local path, s3:// or sample:)")
    return str(Path(uri).expanduser().resolve())


def s3_endpoint(configured: str | None = None) -> str | None:
    return configured or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str, endpoint_url: str | None = None, region: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a resolved URI."""
    if is_s3(uri):
        parsed = urlparse(uri)
        kwargs: dict[str, Any] = {}
        endpoint = s3_endpoint(endpoint_url)
        if endpoint:
            ep = urlparse(endpoint)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        kwargs["region"] = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), uri


def join_uri(base: str, *parts: str) -> str:
    if is_s3(base):
        return "s3://" + posixpath.join(base[len("s3://"):], *parts)
    return os.path.join(base, *parts)


@dataclass(frozen=True)
class Storage:
    """Where S3 lives for this run (None: AWS defaults)."""

    endpoint_url: str | None = None
    region: str | None = None

    def fs(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return filesystem(uri, self.endpoint_url, self.region)

    def parquet_files(self, uri: str) -> list[str]:
        """The Parquet files behind a file or folder URI (paths inside the filesystem), sorted."""
        fs, path = self.fs(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: not found")
        if info.type == pafs.FileType.File:
            return [path]
        selector = pafs.FileSelector(path, recursive=True)
        files = sorted(
            i.path for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.endswith(".parquet") and "/_" not in i.path[len(path):]
        )
        if not files:
            raise InputError(f"{uri}: folder holds no .parquet files")
        return files

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object; on local disk through a temporary file and a rename (S3 PUTs are atomic)."""
        with self.open_writer(uri) as stream:
            stream.write(data)

    @contextlib.contextmanager
    def open_writer(self, uri: str):
        """A binary stream that writes `uri` piece by piece (nothing held whole in memory). On local disk it goes to
        a temporary file renamed on success; on S3 the object appears when the (multipart) upload completes."""
        fs, path = self.fs(uri)
        if is_s3(uri):
            with fs.open_output_stream(path) as stream:
                yield stream
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                yield handle
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.fs(uri)
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def delete_folder(self, uri: str) -> None:
        fs, path = self.fs(uri)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif is_s3(uri):  # S3 "folders" are prefixes: delete what is under it
            for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
                if info.type == pafs.FileType.File:
                    fs.delete_file(info.path)

    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, (json.dumps(value, indent=2, sort_keys=False, default=str) + "\n").encode())

    def write_table(self, uri: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(uri, sink.getvalue().to_pybytes())

    def read_table(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        fs, _ = self.fs(uri)
        files = self.parquet_files(uri)
        return pa.concat_tables([pq.read_table(f, filesystem=fs, columns=columns) for f in files]) if files else None


def atomic_parquet_sink(uri: str, storage: Storage, prefix: str, rows_per_file: int = 50_000):
    """A datasink writing each write task's blocks as one `<prefix>-<uuid>.parquet` under `uri` (via
    `Storage.write_table`: written, then made visible); Ray Data bundles about `rows_per_file` rows per task, so
    many small blocks (an actor pool's output) do not become many small files."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink

    class _Sink(Datasink):
        @property
        def min_rows_per_write(self) -> int:
            return rows_per_file

        def write(self, blocks, ctx) -> list[str]:
            tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
            if not tables:
                return []
            table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
            name = f"{prefix}-{uuid.uuid4().hex}.parquet"
            storage.write_table(join_uri(uri, name), table)
            return [name]

        def get_name(self) -> str:
            return "AtomicParquet"

    return _Sink()


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run (one run = one folder)."""

    root: str

    def path(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    @property
    def labels(self) -> str:
        return self.path("labels")

    @property
    def guidelines(self) -> str:
        return self.path("guidelines")

    @property
    def errors(self) -> str:
        return self.path("errors")

    @property
    def metrics(self) -> str:
        return self.path("metrics")

    @property
    def report(self) -> str:
        return self.path("report.html")
