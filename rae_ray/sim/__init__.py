"""Simulated OpenAI-compatible endpoint: an offline heuristic judge behind the chat-completions API.

Not a real LLM. Used by the demo, tests and benchmarks: `python -m rae_ray.sim --port 0`, or
`with SimProcess(latency_ms=20) as sim: AsyncOpenAI(base_url=sim.base_url, api_key="sim")`.
"""

from rae_ray.sim.config import SimConfig
from rae_ray.sim.judge import SIMULATED_MARK, describe_image, make_guideline
from rae_ray.sim.process import SimProcess, SimStartError, SimThread
from rae_ray.sim.server import create_app, run_server

__all__ = [
    "SIMULATED_MARK",
    "SimConfig",
    "SimProcess",
    "SimStartError",
    "SimThread",
    "create_app",
    "describe_image",
    "make_guideline",
    "run_server",
]
