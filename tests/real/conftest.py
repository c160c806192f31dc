"""A real OpenAI-compatible server for the tests: llama.cpp's `llama-server` with SmolLM2-135M-Instruct.

Built or found by `rae_ray.llamacpp` (`make test` builds it first, once); started on 127.0.0.1 per session and
stopped by its PID. These tests never skip: without a server they fail, saying why.
"""

from __future__ import annotations

import pytest

from rae_ray.llamacpp import LlamaServer

# Per slot: 2,048 tokens of context (llama.cpp splits -c over the -np slots).
SLOTS = 2
CONTEXT = 4096


@pytest.fixture(scope="session")
def llama():
    with LlamaServer(slots=SLOTS, ctx_size=CONTEXT) as server:
        yield server
