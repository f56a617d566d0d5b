"""adapter-serve: one frozen BERT encoder shared by many hot-swapped bottleneck adapters."""

__version__ = "0.1.0"
