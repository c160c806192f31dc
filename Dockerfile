# The image every node of cluster.yaml runs: Ray's official CPU image (Python 3.11) of the Ray version pyproject
# pins, plus this package and its dependencies. No keys here: the LLM API key reaches the Ray processes at
# `ray start` time (see cluster.yaml). tests/cluster/test_cluster_files.py keeps the versions in step.
#   docker build -t rae-ray:0.1.0-ray2.60.0-py311 .
FROM rayproject/ray:2.60.0-py311

WORKDIR /home/ray/rae-ray
# Only what the wheel needs (pyproject and the package with its bundled sample), so edits elsewhere keep the cache.
COPY --chown=ray:users pyproject.toml ./
COPY --chown=ray:users rae_ray ./rae_ray
# A regular (not editable) install into the image's Python; ray[data,default]==2.60.* is already satisfied by
# the base image, so pip keeps its Ray.
RUN pip install --no-cache-dir .

WORKDIR /home/ray
# Outside the source folder, so this imports the installed package: fail the build if pip replaced Ray or the
# bundled sample did not make it into the install.
RUN python -c "import ray, rae_ray; from rae_ray.io import sample_dir; \
assert ray.__version__ == '2.60.0', ray.__version__; assert (sample_dir() / 'search_log.parquet').is_file(); \
print('rae-ray', rae_ray.__version__, 'on ray', ray.__version__)"
