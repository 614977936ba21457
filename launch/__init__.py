"""launch: suites of runs sent as Slurm jobs through submitit, or run locally."""
