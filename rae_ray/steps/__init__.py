"""One step of the paper per module, each taking the run's `Job` and returning its dataset and counts.

retrieve (validate, read the log, pair) -> images -> guidelines -> judge -> errors -> evaluate; `job.run`
composes them.
"""
