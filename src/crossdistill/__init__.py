"""crossdistill: distil big teachers into small students across platforms, over the Open Inference Protocol."""

__version__ = "0.1.0"
