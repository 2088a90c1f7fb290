"""register's stages: the guard, the initial alignment alone, masks, the model card, faults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from intermodal.checkpoint import save_model
from intermodal.cli import main
from intermodal.errors import IntermodalError
from intermodal.networks import RegistrationModel
from intermodal.registration import Settings, register

FAST = dict(spacing=5.0, device="cpu", refine=12)


def _shifting_model(tmp_path, ndim: int = 3, value: float = 3.0, card: dict | None = None):
    """A model that predicts one large constant velocity whatever it sees: harmful."""
    model = RegistrationModel(ndim=ndim)
    with torch.no_grad():
        model.unet.head.weight.zero_()
        model.unet.head.bias.copy_(torch.tensor([value] + [0.0] * (ndim - 1)))
    return save_model(model, tmp_path / "harmful.safetensors", card or {})


def test_the_guard_drops_a_harmful_model(tmp_path, small_pair, caplog):
    """The network's field lowers the similarity: it is dropped with a warning, the refinement
    starts from the initial alignment, and the result is that of no model (up to the working
    grid, which the model's size constraint pads differently)."""
    path = _shifting_model(tmp_path)
    with caplog.at_level("WARNING"):
        guarded = register(small_pair.ct, small_pair.mr, Settings(model=str(path), **FAST))
    plain = register(small_pair.ct, small_pair.mr, Settings(model=None, **FAST))
    network = guarded.report["stages"]["network"]
    assert network["kept"] is False
    assert network["similarity_network"] > network["similarity_initial"]
    assert any("network's field" in w for w in guarded.report["warnings"])
    assert "network's field" in caplog.text
    difference = np.abs(
        sitk.GetArrayFromImage(guarded.displacement) - sitk.GetArrayFromImage(plain.displacement)
    )
    assert guarded.report["stages"]["refine"]["similarity_start"] == network["similarity_initial"]
    assert guarded.report["stages"]["refine"]["steps"] == FAST["refine"]  # no share taken
    assert np.median(difference) < 0.2  # mm


@pytest.mark.parametrize("share", [0.5, 1.0, 0.0])
def test_a_kept_network_field_takes_its_share_of_the_refinement_steps(
    small_pair, monkeypatch, share
):
    """After a network's field that the guard kept, every level takes ``steps_after_network``
    of its steps, rounded up; the report counts the steps taken."""
    import intermodal.refinement as refinement
    import intermodal.registration as registration

    real_predict = registration._predict

    def kept(*args, **kwargs):
        velocity, record = real_predict(*args, **kwargs)
        record = {**record, "similarity_network": record["similarity_initial"], "kept": True}
        return velocity, record

    schedules = []
    real_schedule = refinement.level_schedule

    def recorded(features, velocity, options, schedule, **kwargs):
        schedules.append(list(schedule))
        return velocity

    monkeypatch.setattr(registration, "_predict", kept)
    monkeypatch.setattr(refinement, "refine_on_pyramid", recorded)
    settings = Settings(**{**FAST, "refine": 13}, steps_after_network=share)
    result = register(small_pair.ct, small_pair.mr, settings)
    working = result.report["working_grid"]["size"][::-1]
    full = real_schedule(settings.pyramid, 13, None, working)
    expected = [(factor, int(np.ceil(steps * share))) for factor, steps in full]
    assert schedules == ([expected] if share > 0 else [])
    assert result.report["stages"]["refine"]["steps"] == sum(n for _, n in expected)


def test_the_guard_drops_a_refinement_that_lowers_the_similarity(small_pair, monkeypatch):
    import intermodal.refinement as refinement

    def harmful(features, velocity, *args, **kwargs):
        return velocity + 4.0

    monkeypatch.setattr(refinement, "refine_on_pyramid", harmful)
    result = register(small_pair.ct, small_pair.mr, Settings(**FAST))
    refined = result.report["stages"]["refine"]
    assert refined["kept"] is False
    assert refined["similarity_after"] > refined["similarity_start"]
    assert any("refinement lowered" in w for w in result.report["warnings"])
    assert np.abs(sitk.GetArrayFromImage(result.displacement)).max() == 0.0


def test_a_kept_refinement_improves_the_similarity(small_pair):
    result = register(small_pair.ct, small_pair.mr, Settings(**FAST))
    refined = result.report["stages"]["refine"]
    assert refined["kept"] is True
    assert refined["similarity_after"] < refined["similarity_start"]
    assert result.report["warnings"] == []


def test_no_model_and_no_refinement_is_the_initial_alignment_alone(small_pair, tmp_path):
    from intermodal.report import save_result

    result = register(small_pair.ct, small_pair.mr, Settings(refine=0, spacing=5.0))
    assert np.abs(sitk.GetArrayFromImage(result.displacement)).max() == 0.0
    assert result.report["stages"]["refine"]["steps"] == 0
    affine_only = sitk.Resample(small_pair.mr, small_pair.ct, result.affine, sitk.sitkLinear)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(result.warped), sitk.GetArrayFromImage(affine_only), atol=1e-2
    )
    save_result(result, tmp_path / "out")
    assert (tmp_path / "out" / "transform.h5").exists()
    assert (tmp_path / "out" / "report.json").exists()


def test_images_that_do_not_overlap_are_refused(small_pair):
    far = sitk.Image(small_pair.mr)
    far.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(IntermodalError, match="do not overlap after the initial alignment"):
        register(small_pair.ct, far, Settings(init="none", **FAST))


def test_bad_masks_are_refused(small_pair):
    other_grid = sitk.Image([n // 2 for n in small_pair.ct.GetSize()], sitk.sitkUInt8) + 1
    with pytest.raises(IntermodalError, match="fixed mask is not on the fixed image's grid"):
        register(small_pair.ct, small_pair.mr, Settings(**FAST), fixed_mask=other_grid)
    empty = sitk.Image(small_pair.mr.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(small_pair.mr)
    with pytest.raises(IntermodalError, match="moving mask has no foreground"):
        register(small_pair.ct, small_pair.mr, Settings(**FAST), moving_mask=empty)


def test_a_picture_of_several_components_is_refused_with_the_way_to_read_it():
    gray = np.zeros((20, 24), np.uint8)
    gray[5:15, 6:18] = 200
    scalar = sitk.GetImageFromArray(gray.astype(np.float32))
    rgb = sitk.GetImageFromArray(np.stack([gray] * 3, -1), isVector=True)
    with pytest.raises(IntermodalError, match="moving image has 3 components.*read_image"):
        register(scalar, rgb, Settings(**FAST))
    with pytest.raises(IntermodalError, match="fixed image has 3 components"):
        register(rgb, scalar, Settings(**FAST))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_an_image_with_values_that_are_not_finite_is_refused(value):
    """read_image refuses such a file; an image made in Python gets the same clear refusal
    from register instead of a failure deep in the initial alignment."""
    array = np.zeros((20, 24), np.float32)
    array[5:15, 6:18] = 200
    clean = sitk.GetImageFromArray(array)
    array[:, :3] = value
    broken = sitk.GetImageFromArray(array)
    with pytest.raises(IntermodalError, match="moving image has 60 voxels that are not finite"):
        register(clean, broken, Settings(**FAST))
    with pytest.raises(IntermodalError, match="fixed image has 60 voxels"):
        register(broken, clean, Settings(**FAST))


def test_an_image_of_one_value_is_refused():
    array = np.zeros((20, 24), np.float32)
    array[5:15, 6:18] = 200
    blank = sitk.GetImageFromArray(np.zeros_like(array))
    with pytest.raises(IntermodalError, match="every voxel of the moving image has the value 0"):
        register(sitk.GetImageFromArray(array), blank, Settings(**FAST))


def test_a_mask_limits_what_the_similarity_counts(small_pair):
    """A fixed mask of half the image gives another result than none, and is recorded."""
    array = np.zeros(sitk.GetArrayViewFromImage(small_pair.ct).shape, np.uint8)
    array[:, :, : array.shape[2] // 2] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(small_pair.ct)
    masked = register(small_pair.ct, small_pair.mr, Settings(**FAST), fixed_mask=mask)
    plain = register(small_pair.ct, small_pair.mr, Settings(**FAST))
    assert masked.report["stages"]["network"]["similarity_initial"] != pytest.approx(
        plain.report["stages"]["network"]["similarity_initial"]
    )


def test_the_cli_refuses_a_bad_mask_naming_the_file(capsys, tmp_path, small_pair_files):
    small = sitk.Image(8, 8, 8, sitk.sitkUInt8) + 1
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(small, str(path))
    argv = ["register", "--fixed", small_pair_files["ct"], "--moving", small_pair_files["mr"],
            "--out", tmp_path / "out", "--fixed-mask", path, "--quiet"]  # fmt: skip
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0
    assert str(path) in err and "not on its image's grid" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_model_card_sets_the_integration_steps_and_refuses_a_contradiction(
    tmp_path, small_pair, monkeypatch
):
    card = {"preprocessing": {"normalisation": {"ct": "HU window -1000..1000",
                                                "mr": "percentiles 0.5..99.5"}}}  # fmt: skip
    path = _shifting_model(tmp_path, value=0.0, card=card)
    steps = json.loads(path.with_suffix(".json").read_text())["network"]["integration_steps"]
    result = register(small_pair.ct, small_pair.mr, Settings(model=str(path), **FAST))
    assert result.report["settings"]["integration_steps"] == steps
    other = 3 if steps != 3 else 4
    with pytest.raises(IntermodalError, match="integration steps"):
        register(small_pair.ct, small_pair.mr,
                 Settings(model=str(path), integration_steps=other, **FAST))  # fmt: skip
    with pytest.raises(IntermodalError, match="HU window"):
        register(small_pair.ct, small_pair.mr,
                 Settings(model=str(path), hu_window=(-500.0, 500.0), **FAST))  # fmt: skip
    without = register(small_pair.ct, small_pair.mr, Settings(model=None, **FAST))
    assert without.report["settings"]["integration_steps"] == 5


def test_report_says_how_each_modality_was_decided(small_pair):
    offset = sitk.Cast(sitk.Clamp(small_pair.ct + 1024.0, lowerBound=0.0), sitk.sitkInt16)
    result = register(offset, small_pair.mr, Settings(refine=0, spacing=5.0))
    fixed = result.report["inputs"]["fixed"]
    assert (fixed["modality"], fixed["modality_decided_by"], fixed["hu_offset"]) == (
        "ct", "intensities", 1024.0,
    )  # fmt: skip
    tagged = sitk.Image(small_pair.mr)
    tagged.SetMetaData("intermodal:modality", "MR")
    result = register(small_pair.ct, tagged, Settings(refine=0, spacing=5.0))
    assert result.report["inputs"]["moving"]["modality_decided_by"] == "metadata"


def test_register_puts_label_agreement_and_tre_into_the_qa_report(capsys, tmp_path,
                                                                   small_pair_files):  # fmt: skip
    fixed_points = tmp_path / "fixed.csv"
    moving_points = tmp_path / "moving.csv"
    fixed_points.write_text("x,y,z\n0,0,0\n10,-5,8\n")
    moving_points.write_text("x,y,z\n1,0,0\n10,-4,9\n")
    out = tmp_path / "out"
    argv = ["register", "--fixed", small_pair_files["ct"], "--moving", small_pair_files["mr"],
            "--out", out, "--labels", small_pair_files["mr_labels"],
            "--fixed-labels", small_pair_files["ct_labels"],
            "--landmarks", fixed_points, moving_points,
            "--spacing", "5", "--refine", "8", "--quiet"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    qa = json.loads((out / "qa.json").read_text())
    assert qa["rois"] and all(0 < row["dice"] <= 1 for row in qa["rois"])
    assert {"mean_distance_mm", "hd95_mm", "dice_passed"} <= set(qa["rois"][0])
    assert qa["landmarks"]["count"] == 2 and qa["landmarks"]["mean_mm"] > 0
    page = (out / "report.html").read_text()
    assert "label 1 (on fixed)" in page and "Target registration error" in page


def test_register_refuses_bad_qa_inputs_before_writing(capsys, tmp_path, small_pair_files):
    one = tmp_path / "one.csv"
    two = tmp_path / "two.csv"
    one.write_text("x,y,z\n0,0,0\n")
    two.write_text("x,y,z\n0,0,0\n1,1,1\n")
    base = ["register", "--fixed", small_pair_files["ct"], "--moving", small_pair_files["mr"],
            "--quiet"]  # fmt: skip
    cases = [
        (["--landmarks", one, two], "must list the same landmarks"),
        (["--fixed-labels", small_pair_files["ct_labels"]], "needs --labels"),
    ]
    for extra, message in cases:
        out = tmp_path / f"out{len(extra)}"
        code = main([str(a) for a in [*base, "--out", out, *extra]])
        err = capsys.readouterr().err
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_auto_init_keeps_the_affine_only_where_the_similarity_prefers_it(small_pair):
    """``auto`` computes both alignments and keeps the one the refinement's own similarity
    scores lower; the report gives both scores and the choice."""
    grown = sitk.Image(small_pair.mr)
    grown.SetSpacing([1.25 * s for s in grown.GetSpacing()])
    for moving in (small_pair.mr, grown):
        result = register(small_pair.ct, moving, Settings(refine=0, spacing=5.0, init="auto"))
        align = result.report["stages"]["align"]
        assert align["method"] == "auto" == result.report["initial_transform"]["method"]
        assert result.report["initial_transform"]["kept"] == align["kept"]
        if "similarity" in align:
            scores = align["similarity"]
            assert align["kept"] == min(scores, key=scores.get)
        else:
            assert align["kept"] == "rigid"
    # a moving image a quarter larger than the fixed anatomy needs the scaling
    assert align["kept"] == "affine"
    matrix = np.asarray(result.affine.GetMatrix()).reshape(3, 3)
    assert np.linalg.det(matrix) ** (1 / 3) == pytest.approx(1.25, abs=0.1)


def test_a_named_init_is_used_as_it_is(small_pair):
    result = register(small_pair.ct, small_pair.mr, Settings(refine=0, spacing=5.0))  # rigid
    assert result.report["stages"]["align"] == {"method": "rigid", "half_turn_deg": None}
    assert result.report["initial_transform"]["kept"] == "rigid"
    matrix = np.asarray(result.affine.GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-6)
