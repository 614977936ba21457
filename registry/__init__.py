"""registry: every run's record in MLflow, preservation in the model registry, analysis.

`registry.load("models:/NAME@ALIAS")` returns a ready `latentbridge.bridge.Bridge` from a
preserved version (imported lazily: `import registry.store` stays light).
"""


def load(uri: str, **kwargs):
    """A ready Bridge from a preserved model version; see `registry.loading.load`."""
    from registry.loading import load as _load

    return _load(uri, **kwargs)
