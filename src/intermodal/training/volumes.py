"""Load a prepared split into memory: every subject's CT, MR and labels on one common grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from intermodal.errors import IntermodalError
from intermodal.io import read_image
from intermodal.io.tensors import image_to_tensor

if TYPE_CHECKING:
    from intermodal.data.manifest import Manifest

__all__ = ["Volumes", "load_volumes"]


@dataclass
class Volumes:
    """The images of one split, stacked.

    Attributes:
        ids: subject ids, in manifest order.
        ct: ``(N, 1, *spatial)`` float32, intensities in [0, 1].
        mr: ``(N, 1, *spatial)`` float32, aligned with ``ct`` subject by subject.
        labels: ``(N, 1, *spatial)`` int64 labels on the same grid, or None when the split
            has none (or they were not asked for).
        spacing: voxel size in mm, physical order ``(x, y, z)`` (as ``GetSpacing``).
        shape: spatial shape in array order ``(z, y, x)``.
    """

    ids: list[str]
    ct: Tensor
    mr: Tensor
    labels: Tensor | None
    spacing: tuple[float, ...]
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Volumes:
        """The same volumes on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        return Volumes(
            self.ids, self.ct.to(device), self.mr.to(device), labels, self.spacing, self.shape
        )


def load_volumes(
    manifest: Manifest,
    split: str,
    *,
    dim: int,
    labels: str = "if_all",
    reference: Volumes | None = None,
    labels_for: str = "the Dice loss",
) -> Volumes:
    """Read every subject of ``split`` and check that they share one grid.

    Args:
        manifest: a loaded manifest of a prepared dataset.
        split: the split's name, e.g. ``"training"``.
        dim: the expected image dimension, 2 or 3.
        labels: ``"required"`` (every subject must have labels), ``"if_all"`` (load them when
            every subject has them) or ``"never"``.
        reference: volumes whose grid (shape and spacing) this split must share.
        labels_for: what needs the labels, named when ``"required"`` ones are missing.

    Returns:
        :class:`Volumes` on the CPU.

    Raises:
        IntermodalError: an empty split, a subject of the wrong dimension, a CT, MR or label
            map whose shape or spacing differs from the common grid (naming the subject), or
            missing labels where they are required.
    """
    subjects = manifest.split(split)
    if not subjects:
        raise IntermodalError(f"{manifest.path}: the {split!r} split has no subjects")
    missing = [s.id for s in subjects if s.labels is None]
    if labels == "required" and missing:
        raise IntermodalError(
            f"{manifest.path}: subject {missing[0]!r} of the {split!r} split has no labels, but "
            f"{labels_for} needs them for every subject"
        )
    with_labels = labels == "required" or (labels == "if_all" and not missing)

    shape = None if reference is None else reference.shape
    spacing = None if reference is None else reference.spacing
    cts, mrs, label_maps = [], [], []
    for subject in subjects:
        files = [("ct", subject.ct), ("mr", subject.mr)]
        if with_labels:
            files.append(("labels", subject.labels))
        for kind, path in files:
            image = read_image(path)
            if image.GetDimension() != dim:
                raise IntermodalError(
                    f"subject {subject.id!r}: {kind} {path} is {image.GetDimension()}D, but "
                    f"data.dim is {dim}"
                )
            image_shape = tuple(int(n) for n in reversed(image.GetSize()))
            image_spacing = tuple(float(s) for s in image.GetSpacing())
            if shape is None:
                shape, spacing = image_shape, image_spacing
            if image_shape != shape or not np.allclose(image_spacing, spacing, rtol=1e-4):
                raise IntermodalError(
                    f"subject {subject.id!r}: {kind} {path} has shape {image_shape} (array "
                    f"order) and spacing {image_spacing} mm, but the prepared grid is {shape} "
                    f"with spacing {spacing} mm; run the prepare step so that every image is on "
                    f"the common grid"
                )
            tensor = image_to_tensor(image)[0]
            if kind == "ct":
                cts.append(tensor)
            elif kind == "mr":
                mrs.append(tensor)
            else:
                label_maps.append(tensor.round().to(torch.int64))
    return Volumes(
        ids=[s.id for s in subjects],
        ct=torch.stack(cts),
        mr=torch.stack(mrs),
        labels=torch.stack(label_maps) if with_labels else None,
        spacing=spacing,
        shape=shape,
    )
