"""rae-ray: evaluate e-commerce search rankers with LLM judges on Ray Data (Retrieve, Annotate, Evaluate, Repeat)."""

__version__ = "0.1.0"
