"""Fixtures: a CT and an oblique MR series of one patient, and a registration result on them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("skimage")

from dicom_cases import Case, make_result  # noqa: E402


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return make_result(tmp_path)
