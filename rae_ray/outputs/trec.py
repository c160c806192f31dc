"""OUT/trec/: qrels.txt, one <ranker>.run per ranker, queries.parquet and a README, streamed from the source."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

from rae_ray.evaluation.sources import QRELS, RUN, EvaluationSource
from rae_ray.io import RunLayout, Storage
from rae_ray.metrics.trec import query_ids

__all__ = ["TREC_README", "safe_name", "write_trec"]

TREC_README = """TREC files of this run, for trec_eval, ir_measures or ranx.

qrels.txt      query_id 0 product_id relevance   (judge labels; relevance = 2**grade - 1, so trec_eval's
               nDCG, which uses the relevance as the gain, equals this project's nDCG with gain 2**g - 1)
<ranker>.run   query_id Q0 product_id rank score ranker   (score = n + 1 - rank)
queries.parquet  query_id -> query text (query_id = "q" + the first 16 hex digits of SHA-1 of the text)
product_id     as in the labels, but "%" and whitespace percent-encoded ("SKU 12" -> "SKU%2012")

P@k of trec_eval counts relevance >= 1, i.e. grade >= 1, as this project's precision does.
Example: ir_measures qrels.txt bm25-v1.run nDCG@10 P@10
"""


def safe_name(name: str) -> str:
    """A file-name-safe version of a ranker name (anything but letters, digits, '.', '_', '-' becomes '_')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "ranker"


def write_trec(
    source: EvaluationSource, queries: Sequence[str], rankers: Sequence[str], storage: Storage, layout: RunLayout,
) -> dict[str, str]:
    """qrels.txt (judge labels, relevance 2**g - 1), one <ranker>.run per ranker, queries.parquet, README.txt.

    The source hands the lines over in pieces (`trec_chunks`), each written as it comes: no file is held whole.
    Returns {file name: URI}.
    """
    names: dict[str, str] = {QRELS: "qrels.txt"}
    for ranker in rankers:
        name = safe_name(ranker) + ".run"
        if name in names.values():
            name = f"{safe_name(ranker)}-{len(names) - 1}.run"
        names[RUN + ranker] = name
    written = {name: layout.path("trec", name) for name in names.values()}
    with contextlib.ExitStack() as stack:
        streams = {key: stack.enter_context(storage.open_writer(written[name])) for key, name in names.items()}
        for key, text in source.trec_chunks(rankers):
            streams[key].write(text.encode("utf-8"))
    written["README.txt"] = layout.path("trec", "README.txt")
    storage.write_bytes(written["README.txt"], TREC_README.encode("utf-8"))
    uri = layout.path("trec", "queries.parquet")
    storage.write_table(uri, query_ids(sorted(set(queries))).to_arrow())
    written["queries.parquet"] = uri
    return written
