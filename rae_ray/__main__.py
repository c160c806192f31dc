import sys

from rae_ray.cli import main

sys.exit(main())
