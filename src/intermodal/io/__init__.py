"""Every read and write of images and points, and the image <-> tensor conversions.

Images come in as float32 SimpleITK images with their origin, spacing and direction; tensors
follow ``docs/conventions.md`` (array order, ``(1, 1, *spatial)``).
"""

from intermodal.io._atomic import write_bytes_atomic, write_text_atomic
from intermodal.io.dicom import MODALITY_KEY
from intermodal.io.images import (
    READ_EXTENSIONS,
    WRITE_EXTENSIONS,
    geometry,
    read_image,
    write_image,
)
from intermodal.io.points import read_points, write_points
from intermodal.io.tensors import (
    displacement_to_image,
    image_to_displacement,
    image_to_tensor,
    tensor_to_image,
)
from intermodal.io.transforms import read_transform

__all__ = [
    "MODALITY_KEY",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "displacement_to_image",
    "geometry",
    "image_to_displacement",
    "image_to_tensor",
    "read_image",
    "read_points",
    "read_transform",
    "tensor_to_image",
    "write_bytes_atomic",
    "write_image",
    "write_points",
    "write_text_atomic",
]
