"""sergraph: speech emotion recognition with graph neural networks on PyTorch Lightning.

The Python API for notebooks (each name is imported on first use)::

    import sergraph

    cfg = sergraph.compose(["data=emodb", "data.root=PATH", "trainer.max_epochs=5"])
    summaries = sergraph.run_study(["data=emodb", "data.root=PATH"])  # {label: summary}
    report = sergraph.write_report(["runs/emodb"])                   # tables and figures
    path, bundle = sergraph.export_bundle("runs/emodb/lstm_gin")
    bundle = sergraph.load_bundle(path)
    bundle.predict(["a.wav"]); bundle.predict_signal(samples, 16000)
"""

from sergraph.version import __version__

__all__ = [
    "__version__",
    "compose",
    "export_bundle",
    "load_bundle",
    "run_study",
    "write_report",
]

_LAZY = {
    "compose": "sergraph.config",
    "run_study": "sergraph.training.study",
    "write_report": "sergraph.results.report",
    "export_bundle": "sergraph.deploy.export",
    "load_bundle": "sergraph.deploy.bundle",
}


def __getattr__(name: str):
    # Lazy: feature-extraction workers re-import this package and must not pay for torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sergraph' has no attribute {name!r}")
