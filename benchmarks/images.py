"""Benchmark of the image path: a generated catalog whose colours live only in the pixels.

Products of a few types (mug, cushion, ...) have titles that name no colour; each is photographed in one
colour (Pillow), served by a local HTTP server on 127.0.0.1 (allowed through `images.allow_hosts`). Queries
ask for "<colour> <type>"; every ranker lists the products of the query's type. The pixel-based expectation:
grade 2 when the photo's colour is the query's colour, 1 otherwise (right type, wrong colour). Some products
(`--copies` per type and colour) show a photo that another product shows too, under their own URL: unique
images are told apart by content, so they count once.

Runs, on a local Ray against the simulated endpoint:
1. caption mode, twice, sharing one output folder (and so the label store kept beside it): the first run must
   make exactly one caption call per unique image, the second none;
2. direct mode (the judge sees the image);
3. text mode, for reference (the judge cannot see colours: no target).
Targets: caption calls = unique images, then 0; labels matching the pixel-based expectation >= --min-share
in caption (both runs) and direct mode; one fetch per image URL in each run that uses images. Exits 1 unless they hold. Figures are printed last.

    python benchmarks/images.py [--products-per-colour 2] [--copies 1] [--latency-ms 20] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl

from rae_ray.config import config_from_dict
from rae_ray.job import run
from rae_ray.sim.process import SimProcess

COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60)}
# Titles name the type and other features, never a colour.
TYPES = {
    "mug": ["Ceramic mug 350 ml", "Stoneware mug with handle", "Porcelain mug, dishwasher safe", "Large breakfast mug",
            "Enamel camping mug", "Espresso mug set of two"],
    "cushion": ["Velvet cushion 45 x 45 cm", "Outdoor cushion, water repellent", "Linen cushion with zip",
                "Floor cushion 60 cm", "Knitted cushion", "Round seat cushion"],
    "bottle": ["Stainless steel water bottle 750 ml", "Glass bottle with bamboo lid", "Sports bottle 1 l",
               "Insulated bottle, keeps drinks cold", "Kids drinking bottle", "Foldable silicone bottle"],
    "vase": ["Ceramic vase 30 cm", "Glass vase, hand blown", "Bud vase set", "Tall floor vase",
             "Round table vase", "Stoneware vase with texture"],
}


def product_photo(colour: str, rng: random.Random, image_format: str) -> bytes:
    """A product shot: a block of the colour (shade, size and place jittered, so every image differs) on white."""
    from PIL import Image

    width, height = rng.randint(220, 420), rng.randint(220, 420)
    shade = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[colour])
    image = Image.new("RGB", (width, height), "white")
    body = Image.new("RGB", (int(width * rng.uniform(0.45, 0.8)), int(height * rng.uniform(0.5, 0.85))), shade)
    image.paste(body, (width // 8, height // 10))
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


class ImageServer:
    """Serves the generated photos from memory on 127.0.0.1, in a thread; counts requests per path."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.requests = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with lock:
                    server.requests += 1
                body = server.images.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/jpeg" if self.path.endswith(".jpg") else "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def build_inputs(folder: Path, per_colour: int, copies: int = 1,
                 seed: int = 0) -> tuple[dict[str, bytes], pl.DataFrame, pl.DataFrame]:
    """The search log (written) and the photos; returns (photos by path, products, expectation per pair).
    `copies` more products per type and colour show a photo already in the catalog under another URL."""
    rng = random.Random(seed)
    products, photos = [], {}
    for kind, titles in TYPES.items():
        n = 0
        for colour in COLOURS:
            first = None
            for _ in range(per_colour):
                product_id = f"{kind}-{n:03d}"
                extension = "jpg" if rng.random() < 0.5 else "png"
                path = f"/photos/{product_id}.{extension}"
                photos[path] = product_photo(colour, rng, "JPEG" if extension == "jpg" else "PNG")
                first = first or path
                products.append({"product_id": product_id, "type": kind, "colour": colour,
                                 "title": titles[n % len(titles)] + f" (model {n + 1})", "path": path})
                n += 1
            for _ in range(copies):  # another product whose URL serves the very bytes of `first`
                product_id = f"{kind}-{n:03d}"
                path = f"/mirror/{product_id}{Path(first).suffix}"
                photos[path] = photos[first]
                products.append({"product_id": product_id, "type": kind, "colour": colour,
                                 "title": titles[n % len(titles)] + f" (model {n + 1})", "path": path})
                n += 1
    catalog = pl.DataFrame(products)
    log_rows, expected = [], []
    for kind in TYPES:
        of_kind = catalog.filter(pl.col("type") == kind).to_dicts()
        for colour in COLOURS:
            query = f"{colour} {kind}"
            for ranker in ("shuffled-a", "shuffled-b"):
                order = of_kind[:]
                rng.shuffle(order)
                log_rows += [{"query": query, "ranker": ranker, "rank": rank, "product_id": p["product_id"]}
                             for rank, p in enumerate(order, 1)]
            expected += [{"query": query, "product_id": p["product_id"], "expected": 2 if p["colour"] == colour else 1}
                         for p in of_kind]
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(log_rows).write_parquet(folder / "search_log.parquet")
    return photos, catalog, pl.DataFrame(expected)


def run_config(name: str, mode: str, folder: Path, out: Path, sim_url: str) -> Any:
    return config_from_dict({
        "run_id": name,
        "input": {"log": str(folder / "search_log.parquet"), "catalog": str(folder / "catalog.parquet")},
        "llm": {
            "endpoints": {"default": {"base_url": sim_url, "api_key_env": "RAE_BENCH_UNSET_KEY",
                                      "api_key_required": False}},
            "guidelines": {"model": "sim-judge"},
            "annotate": {"model": "sim-judge"},
            "captions": {"model": "sim-vision"},
        },
        "images": {"mode": mode, "allow_hosts": ["127.0.0.1"]},
        "compute": {"num_cpus": 2, "shuffle_partitions": 2},
        "metrics": {"bootstrap": 100},
        "output": {"uri": str(out)},
    })


def read_labels(root: str) -> pl.DataFrame:
    files = sorted(Path(root, "labels").glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def measure(name: str, mode: str, folder: Path, out: Path, sim: SimProcess, expected: pl.DataFrame) -> dict[str, Any]:
    before = sim.stats()["by_schema"]
    started = time.monotonic()
    result = run(run_config(name, mode, folder, out, sim.base_url))
    seconds = time.monotonic() - started
    after = sim.stats()["by_schema"]
    labels = read_labels(result.root)
    joined = expected.join(labels.select("query", "product_id", "grade", *(
        ["image_status"] if "image_status" in labels.columns else [])), on=["query", "product_id"], how="left")
    matching = joined.filter(pl.col("grade") == pl.col("expected")).height
    statuses = dict(joined["image_status"].value_counts().iter_rows()) if "image_status" in joined.columns else {}
    figures = {
        "run": name, "mode": mode, "seconds": round(seconds, 1), "labels": labels.height,
        "match_share": round(matching / expected.height, 4),
        "caption_calls": after.get("image_caption", 0) - before.get("image_caption", 0),
        "judgement_calls": after.get("relevance_judgement", 0) - before.get("relevance_judgement", 0),
        "manifest_caption_calls": result.manifest.get("llm_calls", {}).get("captions"),
        "image_status": {str(k): v for k, v in statuses.items()},
    }
    print(f"[bench] {name}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--products-per-colour", type=int, default=2, help="Products of each type in each colour.")
    parser.add_argument("--copies", type=int, default=1,
                        help="More products per type and colour whose URL serves a photo already in the catalog.")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="Simulated endpoint latency.")
    parser.add_argument("--min-share", type=float, default=0.95, help="Target share of labels matching the pixels.")
    parser.add_argument("--skip-text", action="store_true", help="Skip the text-mode reference run.")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder (printed).")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rae-bench-images-"))
    folder = work / "inputs"
    photos, catalog, expected = build_inputs(folder, args.products_per_colour, args.copies)
    server = ImageServer(photos)
    catalog.select("product_id", "title", pl.concat_str(pl.lit(server.base), pl.col("path")).alias("image_url")).write_parquet(
        folder / "catalog.parquet")
    unique_images = len(set(photos.values()))  # by content: a copy under another URL is the same image
    runs: dict[str, dict[str, Any]] = {}
    try:
        with SimProcess(latency_ms=args.latency_ms) as sim:
            shared = work / "out-caption"  # both caption runs: same outputs folder, same label store
            plan = [("caption-1", "caption", shared), ("caption-2", "caption", shared),
                    ("direct", "direct", work / "out-direct")] + ([] if args.skip_text else [("text", "text", work / "out-text")])
            for name, mode, out in plan:
                before = server.requests
                runs[name] = measure(name, mode, folder, out, sim, expected)
                runs[name]["image_fetches"] = server.requests - before
    finally:
        server.stop()
        if args.keep:
            print(f"[bench] working folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    targets = {
        "caption calls on the first run = unique images": runs["caption-1"]["caption_calls"] == unique_images,
        "caption calls on the second run = 0": runs["caption-2"]["caption_calls"] == 0,
        f"caption-mode labels matching the pixels >= {args.min_share:.0%} (first run)":
            runs["caption-1"]["match_share"] >= args.min_share,
        f"caption-mode labels matching the pixels >= {args.min_share:.0%} (second run)":
            runs["caption-2"]["match_share"] >= args.min_share,
        f"direct-mode labels matching the pixels >= {args.min_share:.0%}": runs["direct"]["match_share"] >= args.min_share,
        "one fetch per image URL in each caption and direct run": all(
            runs[name]["image_fetches"] == catalog["path"].n_unique() for name in ("caption-1", "caption-2", "direct")),
    }
    ok = all(targets.values())
    print("\n== rae-ray images benchmark (simulated endpoint) ==")
    print(f"catalog: {catalog.height} products, {catalog['path'].n_unique()} image URLs, {unique_images} unique images, "
          f"{expected.height} (query, product) pairs")
    for name, figures in runs.items():
        print(f"{name:>10}: {figures['mode']:<7} caption calls {figures['caption_calls']:>4}   "
              f"labels matching the pixels {figures['match_share']:.1%}   judgement calls "
              f"{figures['judgement_calls']:>4}   image fetches {figures['image_fetches']:>3}   {figures['seconds']:.1f}s   "
              f"image_status {figures['image_status']}")
    for target, held in targets.items():
        print(f"  [{'ok' if held else 'FAIL'}] {target}")
    print(json.dumps({"image_urls": catalog["path"].n_unique(), "unique_images": unique_images,
                      "pairs": expected.height, "runs": runs,
                      "targets_hold": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
