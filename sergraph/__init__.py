"""sergraph: speech emotion recognition with graph neural networks on PyTorch Lightning."""

__version__ = "0.1.0"
