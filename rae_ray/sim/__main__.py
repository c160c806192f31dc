"""`python -m rae_ray.sim` / `rae-ray sim`: run the simulated OpenAI-compatible endpoint until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from rae_ray.sim.config import API_KEY_ENV, ERROR_KINDS, SimConfig
from rae_ray.sim.server import LISTENING_LINE, run_server


def build_parser(prog: str = "python -m rae_ray.sim") -> argparse.ArgumentParser:
    fields = SimConfig.model_fields

    def doc(name: str) -> str:
        return fields[name].description or ""

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulated OpenAI-compatible endpoint (offline heuristic judge, not a real LLM).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--host", help=doc("host"))
    parser.add_argument("--port", type=int, help=doc("port"))
    parser.add_argument("--models", type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
                        help=doc("models") + " Comma-separated.")
    parser.add_argument("--latency-ms", type=float, help=doc("latency_ms"))
    parser.add_argument("--latency-jitter-ms", type=float, help=doc("latency_jitter_ms"))
    parser.add_argument("--latency-distribution", choices=["uniform", "lognormal"], help=doc("latency_distribution"))
    parser.add_argument("--max-in-flight", type=int, help=doc("max_in_flight"))
    parser.add_argument("--rpm", type=int, help=doc("rpm"))
    parser.add_argument("--tpm", type=int, help=doc("tpm"))
    for kind in ERROR_KINDS:
        name = f"error_rate_{kind}"
        parser.add_argument("--" + name.replace("_", "-"), type=float, help=doc(name))
    parser.add_argument("--batch-api-failures", type=int, help=doc("batch_api_failures"))
    parser.add_argument("--timeout-hold-s", type=float, help=doc("timeout_hold_s"))
    parser.add_argument("--retry-after-s", type=int, help=doc("retry_after_s"))
    parser.add_argument("--seed", type=int, help=doc("seed"))
    parser.add_argument("--judge-noise", type=float, help=doc("judge_noise"))
    parser.add_argument("--vision", action=argparse.BooleanOptionalAction, help=doc("vision"))
    parser.add_argument("--context-tokens", type=int, help=doc("context_tokens"))
    parser.add_argument("--reasoning", action=argparse.BooleanOptionalAction, help=doc("reasoning"))
    parser.add_argument("--json-schema", action=argparse.BooleanOptionalAction, help=doc("json_schema"))
    parser.add_argument("--api-key", help=doc("api_key"))
    parser.add_argument("--revoke-key-after", type=int, help=doc("revoke_key_after"))
    parser.add_argument("--prefix-cache-size", type=int, help=doc("prefix_cache_size"))
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, help=doc("access_log"))
    parser.add_argument("--record-requests", type=int, help=doc("record_requests"))
    return parser


def config_from_args(argv: Sequence[str] | None = None, prog: str = "python -m rae_ray.sim") -> SimConfig:
    """Parse command-line flags into a `SimConfig` (the API key may also come from $RAE_SIM_API_KEY)."""
    values = vars(build_parser(prog).parse_args(argv))
    if "api_key" not in values and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    return SimConfig(**values)


async def serve_until_signalled(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    async with run_server(config) as base_url:
        print(LISTENING_LINE.format(base_url=base_url), flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None, prog: str = "python -m rae_ray.sim") -> int:
    """Run the endpoint; returns the exit code (2 for bad flags or settings, 1 if it cannot listen)."""
    try:
        config = config_from_args(argv, prog)
    except SystemExit as exit_:  # argparse: --help or a bad flag
        return exit_.code if isinstance(exit_.code, int) else 2
    except ValidationError as error:
        print(f"rae-ray sim: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_until_signalled(config))
    except OSError as error:
        print(f"rae-ray sim: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
