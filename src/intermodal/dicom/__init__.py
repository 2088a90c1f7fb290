"""DICOM out: the warped series, spatial registration objects, RT Structure Sets.

Every object is built with pydicom (imported lazily) and contours with scikit-image.
:func:`export_dicom` is the entry point; the modules hold one object kind each.
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
