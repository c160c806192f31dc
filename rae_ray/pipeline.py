"""Deprecated: the job is composed in `rae_ray.job` now (its steps in `rae_ray.steps`). Kept so that
`from rae_ray.pipeline import run` still works; new code imports `rae_ray.job`."""

import warnings

from rae_ray.job import RunResult, run

warnings.warn("rae_ray.pipeline is deprecated: import run from rae_ray.job", DeprecationWarning, stacklevel=2)

__all__ = ["RunResult", "run"]
