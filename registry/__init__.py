"""registry: every run's record in MLflow, preservation in the model registry, analysis."""
