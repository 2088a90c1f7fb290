"""DICOM out: the warped series, spatial registration objects, RT Structure Sets.

Every object is built with pydicom (imported lazily), which encodes it; contours are made
with scikit-image. :func:`export_dicom` is the entry point; the modules hold one object kind
each: :mod:`.series` (the warped image series), :mod:`.spatial_registration` (the deformable
and the matrix Spatial Registration objects, written and read back), :mod:`.structures` (RT
Structure Sets).

Libraries considered and not used: highdicom (0.28, which needs pydicom >= 3.0.1, so it works
with pydicom 3) has no RT Structure Set and no Spatial Registration IOD, and its image classes
(Secondary Capture, Segmentation, Parametric Map) are not the MR or CT image IOD a planning
system expects of a registered series, so it would add a dependency for UIDs alone; rt-utils
has had no release since 2023 and writes only structure sets, from its own OpenCV contours.
"""

from intermodal.dicom._common import DicomError, SeriesInfo, read_series_info
from intermodal.dicom.export import ExportSummary, check_dicom_inputs, export_dicom
from intermodal.dicom.spatial_registration import read_registration

__all__ = [
    "DicomError",
    "ExportSummary",
    "SeriesInfo",
    "check_dicom_inputs",
    "export_dicom",
    "read_registration",
    "read_series_info",
]
