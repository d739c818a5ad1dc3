"""edgekit: compile transformer models into verified bundles for edge devices."""

__version__ = "0.1.0"
