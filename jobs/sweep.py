"""Entry point for a sweep under `ray job submit`: several variants of one config sharing a label store.

    ray job submit --working-dir . -- python jobs/sweep.py --sweep jobs/configs/sweep-demo.yaml

Exits 0 on success, 2 on a bad sweep/config/input/endpoint, 1 on any other failure.
"""

import sys

from rae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
