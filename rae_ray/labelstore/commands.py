"""`rae-ray store compact|stats|migrate --store URI`: the label store's upkeep from the command line."""

from __future__ import annotations

import argparse
import json

from rae_ray.io import Storage, resolve_uri

# Delta's default: files a compaction replaced stay 7 days, so a run still reading an older version misses none.
DEFAULT_RETENTION_HOURS = 168


def _store(args: argparse.Namespace):
    from rae_ray.labelstore.store import LabelStore

    return LabelStore(resolve_uri(args.store), Storage())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def stats_table(result: dict) -> str:
    """The stats as a printed table: one line per kind, then one per kind and model."""
    lines = [f"label store {result['store']}", "",
             f"{'kind':<12} {'model':<28} {'records':>10} {'keys':>10} {'files':>7} {'bytes':>11} {'version':>8}"]
    for kind, s in result["kinds"].items():
        keys = "" if s["keys"] is None else f"{s['keys']:,}"
        lines.append(f"{kind:<12} {'(all)':<28} {s['records']:>10,} {keys:>10} {s['files']:>7,} "
                     f"{_size(s['bytes']):>11} {s['version']:>8}")
        for model, n in s["by_model"].items():
            lines.append(f"{kind:<12} {model[:28]:<28} {n:>10,}")
    if not result["kinds"]:
        lines.append("(empty: no table yet)")
    return "\n".join(lines)


def cmd_store(args: argparse.Namespace) -> int:
    from rae_ray.labelstore import maintenance

    store = _store(args)
    if args.store_command == "stats":
        result = maintenance.stats(store)
        print(json.dumps(result, indent=2) if args.json else stats_table(result))
    elif args.store_command == "compact":
        for r in maintenance.compact(store, args.retention_hours):
            if "skipped" in r:
                print(f"{r['kind']}: skipped ({r['skipped']})")
                continue
            print(f"{r['kind']}: {r['files_before']} files -> {r['files_after']}, {r['records_before']:,} records -> "
                  f"{r['records_after']:,} ({r['duplicates_removed']} duplicate keys collapsed, "
                  f"{r['buckets_rewritten']} buckets rewritten), {r['files_vacuumed']} old files vacuumed "
                  f"(retention {args.retention_hours} h), table version {r['version']}")
            for conflict in r["conflicts"]:
                print(f"  left as is, changed meanwhile by another compaction: {conflict}")
    else:
        results = maintenance.migrate(store)
        for r in results:
            if not r["shards"]:
                print(f"{r['kind']}: nothing to migrate (no shards of the earlier format)")
            else:
                print(f"{r['kind']}: {r['shards']} shards, {r['records_read']:,} records read, "
                      f"{r['records_added']:,} added to the Delta table "
                      f"({r['records_read'] - r['records_added']:,} held already); shards removed")
        if not results:
            print(f"{store.uri}: no labels/, guidelines/ or captions/ folder: nothing to migrate")
    return 0


def add_parser(sub) -> None:
    store = sub.add_parser("store", help="label store upkeep: compact, stats, migrate")
    verbs = store.add_subparsers(dest="store_command", required=True)
    for name, text in (("compact", "merge small files, keep one record per key, vacuum old files"),
                       ("stats", "records, keys, files and bytes by kind and model"),
                       ("migrate", "move a store of the earlier shard format into its Delta tables")):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("--store", required=True, help="label store folder or s3:// prefix (e.g. OUT/_store)")
        if name == "stats":
            verb.add_argument("--json", action="store_true", help="print JSON")
        if name == "compact":
            verb.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS,
                              help="files replaced longer ago than this are deleted (default 168: 7 days)")
    store.set_defaults(func=cmd_store)
