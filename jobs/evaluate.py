"""Entry point for `ray job submit`: the same code path as `rae-ray run`.

    ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/openai-s3.yaml --set k=20

Exits 0 on success, 2 on a bad config/input/endpoint, 1 on any other failure.
"""

import sys

from rae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
