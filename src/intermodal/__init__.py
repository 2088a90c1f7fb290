"""intermodal: deep-learning deformable registration of CT and MR images."""

__version__ = "0.1.0"
