"""Evaluation metrics: overlap between label maps."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from intermodal.errors import IntermodalError


def dice_per_label(
    reference: sitk.Image, candidate: sitk.Image, labels: Mapping[str, int]
) -> dict[str, float]:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per named label, on one grid.

    Args:
        reference: label map, e.g. the fixed image's.
        candidate: label map on the same grid, e.g. the warped moving labels.
        labels: name -> integer label value.

    Returns:
        name -> Dice in ``[0, 1]``; NaN where the label is absent from both maps.

    Raises:
        IntermodalError: if the two maps have different sizes.
    """
    if reference.GetSize() != candidate.GetSize():
        raise IntermodalError(
            f"label maps differ in size: {reference.GetSize()} and {candidate.GetSize()}"
        )
    a = sitk.GetArrayViewFromImage(reference)
    b = sitk.GetArrayViewFromImage(candidate)
    scores = {}
    for name, value in labels.items():
        in_a, in_b = a == value, b == value
        total = int(in_a.sum() + in_b.sum())
        scores[name] = (
            float(2 * np.logical_and(in_a, in_b).sum() / total) if total else float("nan")
        )
    return scores
