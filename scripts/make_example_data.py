"""Build the bundled example's input rasters (deterministic; skipped when already present).

Usage: python scripts/make_example_data.py [FOLDER]
"""

import sys

from workflow_lib.example import make_example

for path in make_example(sys.argv[1] if len(sys.argv) > 1 else "data/example"):
    print(path)
