"""Build-time helpers shared by the component definitions (never imported inside a component body).

A lightweight KFP component ships only its function's source, so everything a component *runs* lives
in ``crossdistill``; this module only answers questions asked while defining and compiling them.
"""

from __future__ import annotations

from pathlib import Path

COMPONENTS_DIR = Path(__file__).resolve().parent

# Image roles of images/images.yaml: which image each component runs in.
TEACHER = "teacher"  # TensorFlow/Keras + KServe (TPU-capable)
STUDENT = "student"  # PyTorch (CUDA)
CPU = "cpu"  # everything, CPU only


def image(role: str) -> str:
    """The base image of a component of ``role``, as images/images.yaml pins it."""
    from crossdistill.images import image_for

    return image_for(role)
