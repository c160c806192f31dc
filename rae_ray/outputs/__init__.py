"""Writers of a run's outputs: the evaluation's tables (`tables`) and TREC files (`trec`); report.html is
written by `rae_ray.report`."""

from rae_ray.outputs.tables import evaluation_tables, write_evaluation, write_tables
from rae_ray.outputs.trec import safe_name, write_trec

__all__ = ["evaluation_tables", "safe_name", "write_evaluation", "write_tables", "write_trec"]
