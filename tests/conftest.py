"""Shared fixtures: small phantom pairs written to a temporary folder, and the real pair."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from intermodal.data.phantom import PhantomPair, make_phantom_pair

REAL_PAIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mridir"


@pytest.fixture(scope="session")
def small_pair() -> PhantomPair:
    """A 3D phantom pair, 32 x 40 x 40 voxels of 5 mm: fast enough for end-to-end tests."""
    return make_phantom_pair(shape=(32, 40, 40), spacing=5.0, rotation_deg=8.0)


@pytest.fixture(scope="session")
def small_pair_2d() -> PhantomPair:
    """A 2D phantom pair, 64 x 64 pixels of 3 mm."""
    return make_phantom_pair(shape=(64, 64), spacing=3.0, rotation_deg=8.0, shift_mm=(5.0, -3.0))


@pytest.fixture(scope="session")
def small_pair_files(tmp_path_factory, small_pair) -> dict[str, Path]:
    """The 3D phantom pair on disk: ct, mr, and the MR's labels."""
    folder = tmp_path_factory.mktemp("pair")
    paths = {name: folder / f"{name}.nii.gz" for name in ("ct", "mr", "mr_labels", "ct_labels")}
    sitk.WriteImage(small_pair.ct, str(paths["ct"]))
    sitk.WriteImage(small_pair.mr, str(paths["mr"]))
    sitk.WriteImage(small_pair.mr_labels, str(paths["mr_labels"]))
    sitk.WriteImage(small_pair.ct_labels, str(paths["ct_labels"]))
    return paths


@pytest.fixture(scope="session")
def real_pair() -> dict[str, Path]:
    """The MRI-DIR pork phantom CT and T2 MR, or a skip when ../shared is absent."""
    ct, mr = REAL_PAIR / "ct_2mm.nii.gz", REAL_PAIR / "mr_t2_2mm.nii.gz"
    if not (ct.is_file() and mr.is_file()):
        pytest.skip(f"real CT/MR pair not found at {REAL_PAIR} (../shared/data/mridir)")
    return {"ct": ct, "mr": mr}
