"""Planning, from headers only: the target grid and its tiles, each dataset's footprint on it and
its warp settings, and the plan that the Snakefile reads at parse time."""
