"""`rae-ray review import FILE --store URI`: people's grades from a filled review queue into the label store.

The whole file is checked first; any problem (a missing column, an unknown pair, a grade that does not parse or
lies off the row's scale, a bad reviewed_at, one pair graded twice differently) stops the import with every
problem named by file:line and column, and nothing is written. A good file becomes one shard of human records
(`labelstore.human`), which later runs take over any LLM label of those pairs, sending them to no LLM.

A pair is unknown when the row cannot name it: its query or product_id is empty, or its product_hash is not the
content hash a rae-ray run wrote (20 hex digits; the review queue of `rae-ray metrics` has none).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from rae_ray.io import InputError, Storage, resolve_uri
from rae_ray.labelstore.human import HUMAN_KEY, HUMAN_KIND, HUMAN_RECORD, human_key, parse_scale_text
from rae_ray.labelstore.keys import normalize_query
from rae_ray.labelstore.store import LabelStore, publish_shard

REQUIRED_COLUMNS = ("query", "product_id", "product_hash", "scale", "human_grade")
OPTIONAL_COLUMNS = ("note", "reviewer", "reviewed_at")
PRODUCT_HASH = re.compile(r"[0-9a-f]{20}")
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class ImportResult:
    imported: int  # rows with a human_grade, now human records in the store
    not_graded: int  # rows left without a human_grade (not reviewed): skipped
    store: str


def _rows(text: str, source: str) -> list[tuple[int, dict[str, str | None]]]:
    """(line where the row starts, row) of a CSV text; raises on a header without the required columns."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"review file {source}:1: missing column(s) {missing} (has: {', '.join(header) or 'none'}); "
                         f"nothing imported. Fill in the review queue (review/queue.csv of a run): it has them all")
    rows, start = [], 2
    for row in reader:
        rows.append((start, row))
        start = reader.line_num + 1
    return rows


def _grade(text: str) -> int:
    """An integer grade as people and spreadsheets write it ("2", " 2 ", "2.0"); ValueError otherwise."""
    value = float(text)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def check_review_rows(rows: list[tuple[int, dict[str, str | None]]], source: str) -> tuple[list[dict], list[str], int]:
    """(human records, problems, rows without a grade): every row checked, every problem named by file:line, column."""
    records, problems, not_graded = [], [], 0
    seen: dict[str, tuple[int, int]] = {}  # human key -> (line, grade)
    accepted_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    for line, row in rows:
        where = f"{source}:{line}"
        if None in row:  # more fields than the header
            problems.append(f"{where}: {len(row[None]) + len(row) - 1} fields, the header has {len(row) - 1}")
            continue
        value = {name: (row.get(name) or "").strip() for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
        if not value["human_grade"]:
            not_graded += 1
            continue
        before = len(problems)
        for column in ("query", "product_id"):
            if not value[column]:
                problems.append(f"{where}, column {column}: empty, so the pair is unknown")
        if not PRODUCT_HASH.fullmatch(value["product_hash"]):
            problems.append(f"{where}, column product_hash: {value['product_hash']!r} is not the product content hash "
                            "of a rae-ray run (20 hex digits), so the pair is unknown")
        scale = None
        try:
            scale = parse_scale_text(value["scale"])
        except ValueError as error:
            problems.append(f"{where}, column scale: {value['scale']!r} is not a scale like "
                            f"'2=highly_relevant;1=acceptable_substitute;0=irrelevant' ({error})")
        grade = None
        try:
            grade = _grade(value["human_grade"])
        except (ValueError, OverflowError):
            problems.append(f"{where}, column human_grade: {value['human_grade']!r} is not an integer grade")
        if grade is not None and scale is not None and grade not in scale:
            problems.append(f"{where}, column human_grade: {grade} is off the scale {sorted(scale)}")
        if value["reviewed_at"]:
            try:
                datetime.fromisoformat(value["reviewed_at"])
            except ValueError:
                problems.append(f"{where}, column reviewed_at: {value['reviewed_at']!r} is not an ISO date or time "
                                "(e.g. 2026-11-30 or 2026-11-30T14:05:00Z)")
        if len(problems) > before:
            continue
        key = human_key(value["query"], value["product_hash"], list(scale))
        if key in seen and seen[key][1] != grade:
            problems.append(f"{where}, column human_grade: {grade}, but line {seen[key][0]} grades the same pair "
                            f"(query {normalize_query(value['query'])!r}, product_hash {value['product_hash']}) "
                            f"{seen[key][1]}")
            continue
        seen[key] = (line, grade)
        records.append({
            HUMAN_KEY: key, "accepted_at": accepted_at, "query": value["query"], "product_id": value["product_id"],
            "product_hash": value["product_hash"], "grade": grade, "label": scale[grade], "note": value["note"] or None,
            "reviewer": value["reviewer"] or None, "reviewed_at": value["reviewed_at"] or None,
            "scale": value["scale"], "source_file": source,
        })
    return records, problems, not_graded


def import_review(uri: str, store_uri: str, storage: Storage | None = None) -> ImportResult:
    """Check a filled review queue (CSV) and, only if every row is good, write its graded rows as human records."""
    storage = storage or Storage()
    resolved = resolve_uri(uri)
    try:
        text = storage.read_bytes(resolved).decode("utf-8")
    except OSError as error:  # not found, unreadable
        raise InputError(f"review file {uri}: cannot be read ({error})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"review file {uri}: not UTF-8 text ({error}); save it as UTF-8 CSV") from None
    records, problems, not_graded = check_review_rows(_rows(text, uri), uri)
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise InputError(f"review file {uri}: {len(problems)} problem(s); nothing imported:\n  {shown}{more}")
    store = LabelStore(resolve_uri(store_uri), storage)
    if records:
        schema = pa.schema([(HUMAN_KEY, pa.string()), *HUMAN_RECORD.items()])
        table = pa.Table.from_pylist(records, schema=schema)
        run_id = "review-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        publish_shard(table, store.folder(HUMAN_KIND), storage, run_id, only_successful=False)
    return ImportResult(imported=len(records), not_graded=not_graded, store=store.uri)
