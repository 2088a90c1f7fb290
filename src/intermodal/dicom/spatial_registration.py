"""DICOM Spatial Registration objects: the deformable one (PS3.3 C.20.3) and the matrix one.

Conventions, from the standard's own text:

* **Deformable** (C.20.3.1.1): the Pre Deformation matrix, then the deformation offsets, then
  the Post Deformation matrix are applied to a point ``x`` of the Registered RCS (the fixed
  CT, the object's own Frame of Reference); the result addresses the sample point in the
  Source RCS (the moving MR)::

      source(x) = M_post @ (M_pre @ x + D(x))

  with ``D`` the offsets on the Deformable Registration Grid, placed in the Registered RCS.
  intermodal's transform is ``T(x) = A(x + d(x))`` (``A`` the affine, ``d`` the displacement,
  both fixed -> moving), so ``M_pre = A``, ``M_post = I`` and ``D(x) = L d(x)`` with ``L`` the
  linear part of ``A``: exactly the same map, with no approximation.
* **Matrix** (C.20.2.1.1): the Frame of Reference Transformation Matrix of an item of the
  Registration Sequence maps a point of that item's Frame of Reference into the object's own,
  so the moving MR's item holds ``A^-1`` (MR -> CT).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from intermodal.dicom._common import (
    DicomError,
    SeriesInfo,
    base_dataset,
    common_instance_reference,
    content_date_time,
    ds_numbers,
    image_references,
    matrix_type,
    new_uid,
    pydicom_module,
    save_dataset,
)

if TYPE_CHECKING:
    from pydicom import Dataset

SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.3"
MAX_GRID_VECTORS = 8_000_000
"""Largest deformation grid written (96 MB of float32 vectors); a finer field is subsampled."""


def _registration_type() -> list[Dataset]:
    from pydicom.dataset import Dataset

    # CID 7100 "RCS Registration Method Type": 125024 Image Content-based Alignment
    code = Dataset()
    code.CodeValue = "125024"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Image Content-based Alignment"
    return [code]


def _matrix_item(matrix: np.ndarray) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.FrameOfReferenceTransformationMatrix = ds_numbers(matrix.ravel())
    item.FrameOfReferenceTransformationMatrixType = matrix_type(matrix)
    return item


def _series_module(ds: Dataset, fixed: SeriesInfo, label: str) -> None:
    ds.Modality = "REG"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = 902
    ds.SeriesDescription = label[:64]
    ds.Laterality = fixed.first.get("Laterality", "")
    ds.FrameOfReferenceUID = fixed.frame_of_reference_uid
    ds.PositionReferenceIndicator = fixed.first.get("PositionReferenceIndicator", "")
    ds.DeviceSerialNumber = "0"
    ds.InstanceNumber = 1
    ds.ContentLabel = "REGISTRATION"
    ds.ContentDescription = label[:64]
    ds.ContentCreatorName = ""
    content_date_time(ds)


def write_deformable_registration(
    path: Path,
    *,
    affine: np.ndarray,
    displacement: sitk.Image,
    fixed: SeriesInfo,
    moving: SeriesInfo,
    description: str,
) -> Path:
    """Write a Deformable Spatial Registration object from the moving to the fixed FoR.

    Args:
        path: the file to write.
        affine: 4x4 matrix of the initial transform, fixed -> moving (mm).
        displacement: the deformable part ``d`` (LPS mm vectors, fixed -> moving, applied
            before ``affine``) on any 3D grid in the fixed space; a grid over
            :data:`MAX_GRID_VECTORS` is subsampled by a whole stride.
        fixed: the registered series (the object's Frame of Reference and study).
        moving: the source series.
        description: FrameOfReferenceTransformationComment: the method that made it.

    Returns:
        ``path``.
    """
    from pydicom.dataset import Dataset

    field = displacement
    stride = 1
    while np.prod([max(1, -(-n // stride)) for n in field.GetSize()]) > MAX_GRID_VECTORS:
        stride += 1
    if stride > 1:
        field = field[::stride, ::stride, ::stride]
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)  # (z, y, x, 3)
    vectors = vectors @ affine[:3, :3].T  # D = L d
    direction = np.array(field.GetDirection()).reshape(3, 3)

    ds = base_dataset(DEFORMABLE_SPATIAL_REGISTRATION, new_uid(), template=fixed)
    _series_module(ds, fixed, "deformable registration (intermodal)")
    grid = Dataset()
    grid.ImageOrientationPatient = ds_numbers(np.concatenate([direction[:, 0], direction[:, 1]]))
    grid.ImagePositionPatient = ds_numbers(field.GetOrigin())
    grid.GridDimensions = [int(n) for n in field.GetSize()]
    grid.GridResolution = [float(s) for s in field.GetSpacing()]
    grid.VectorGridData = np.ascontiguousarray(vectors, dtype="<f4").tobytes()

    source = Dataset()
    source.SourceFrameOfReferenceUID = moving.frame_of_reference_uid
    source.ReferencedImageSequence = image_references(moving.instances)
    source.FrameOfReferenceTransformationComment = description[:64]
    source.RegistrationTypeCodeSequence = _registration_type()
    source.PreDeformationMatrixRegistrationSequence = [_matrix_item(affine)]
    source.PostDeformationMatrixRegistrationSequence = [_matrix_item(np.eye(4))]
    source.DeformableRegistrationGridSequence = [grid]

    own = Dataset()  # the registered series itself, unchanged
    own.SourceFrameOfReferenceUID = fixed.frame_of_reference_uid
    own.ReferencedImageSequence = image_references(fixed.instances)
    own.RegistrationTypeCodeSequence = []
    own.PreDeformationMatrixRegistrationSequence = [_matrix_item(np.eye(4))]
    ds.DeformableRegistrationSequence = [source, own]
    common_instance_reference(ds, [fixed, moving])
    return save_dataset(ds, path)


def write_matrix_registration(
    path: Path, *, affine: np.ndarray, fixed: SeriesInfo, moving: SeriesInfo, description: str
) -> Path:
    """Write a (rigid or affine) Spatial Registration object from the moving to the fixed FoR.

    Args:
        path: the file to write.
        affine: 4x4 matrix of the transform, fixed -> moving (mm); ``A^-1`` is written.
        fixed, moving: the registered and the source series.
        description: FrameOfReferenceTransformationComment.
    """
    from pydicom.dataset import Dataset

    ds = base_dataset(SPATIAL_REGISTRATION, new_uid(), template=fixed)
    _series_module(ds, fixed, "spatial registration (intermodal)")
    items = []
    for info, matrix, comment in (
        (fixed, np.eye(4), "identity: the registered series"),
        (moving, np.linalg.inv(affine), description),
    ):
        matrices = Dataset()
        matrices.MatrixSequence = [_matrix_item(matrix)]
        matrices.FrameOfReferenceTransformationComment = comment[:64]
        matrices.RegistrationTypeCodeSequence = _registration_type() if info is moving else []
        item = Dataset()
        item.FrameOfReferenceUID = info.frame_of_reference_uid
        item.ReferencedImageSequence = image_references(info.instances)
        item.MatrixRegistrationSequence = [matrices]
        items.append(item)
    ds.RegistrationSequence = items
    common_instance_reference(ds, [fixed, moving])
    return save_dataset(ds, path)


def _matrix(item: Dataset) -> np.ndarray:
    return np.array([float(v) for v in item.FrameOfReferenceTransformationMatrix]).reshape(4, 4)


def read_registration(path: str | Path, source_frame_of_reference: str) -> sitk.Transform:
    """Read a Spatial Registration object (deformable or matrix) as an ITK transform.

    The transform maps points of the object's own Frame of Reference (registered, e.g. the
    CT) to points of ``source_frame_of_reference`` (e.g. the MR), the direction in which
    ITK resamples: ``sitk.Resample(mr, ct_grid, transform)`` puts the MR on the CT grid.

    Raises:
        DicomError: not a Spatial Registration object, or it has no item for
            ``source_frame_of_reference``.
    """
    pydicom = pydicom_module()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as err:
        raise DicomError(f"{path}: not a readable DICOM file ({err})") from err
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SPATIAL_REGISTRATION:
        for item in ds.RegistrationSequence:
            if item.get("FrameOfReferenceUID") == source_frame_of_reference:
                to_registered = np.eye(4)
                for matrices in item.MatrixRegistrationSequence:
                    for matrix in matrices.MatrixSequence:
                        to_registered = _matrix(matrix) @ to_registered
                return _affine_transform(np.linalg.inv(to_registered))
    elif sop_class == DEFORMABLE_SPATIAL_REGISTRATION:
        for item in ds.DeformableRegistrationSequence:
            if item.get("SourceFrameOfReferenceUID") == source_frame_of_reference:
                return _deformable_transform(item)
    else:
        raise DicomError(f"{path}: SOP class {sop_class} is not a Spatial Registration")
    raise DicomError(f"{path}: no registration of Frame of Reference {source_frame_of_reference}")


def _affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return transform


def _deformable_transform(item: Dataset) -> sitk.Transform:
    """``x -> M_post (M_pre x + D(x))`` as ITK transforms: ``D`` becomes ``L^-1 D``, applied
    first, so that ``M_pre`` after it adds ``D`` (C.20.3.1.1)."""
    pre = np.eye(4)
    if "PreDeformationMatrixRegistrationSequence" in item:
        pre = _matrix(item.PreDeformationMatrixRegistrationSequence[0])
    post = np.eye(4)
    if "PostDeformationMatrixRegistrationSequence" in item:
        post = _matrix(item.PostDeformationMatrixRegistrationSequence[0])
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(_affine_transform(post))
    composite.AddTransform(_affine_transform(pre))
    grids = item.get("DeformableRegistrationGridSequence", [])
    if grids:
        grid = grids[0]
        size = [int(n) for n in grid.GridDimensions]
        vectors = np.frombuffer(grid.VectorGridData, dtype="<f4").astype(np.float64)
        vectors = vectors.reshape(size[2], size[1], size[0], 3) @ np.linalg.inv(pre[:3, :3]).T
        field = sitk.GetImageFromArray(vectors, isVector=True)
        orientation = np.array([float(v) for v in grid.ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        field.SetDirection(np.column_stack([orientation[:3], orientation[3:], normal]).ravel())
        field.SetOrigin([float(v) for v in grid.ImagePositionPatient])
        field.SetSpacing([float(v) for v in grid.GridResolution])
        composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite
