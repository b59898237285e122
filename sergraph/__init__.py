"""sergraph: speech emotion recognition with graph neural networks on PyTorch Lightning."""

from sergraph.version import __version__

__all__ = ["__version__", "load_bundle"]


def __getattr__(name: str):
    # Lazy: feature-extraction workers re-import this package and must not pay for torch.
    if name == "load_bundle":
        from sergraph.deploy.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'sergraph' has no attribute {name!r}")
