"""The view modes and slice geometry, as pure NumPy (no Qt needed), with hand-worked answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from intermodal.errors import IntermodalError
from intermodal.gui import display
from intermodal.gui.display import Grid, RenderOptions, SliceLayers
from intermodal.gui.scene import (
    Scene,
    displacement_voxels,
    make_layer,
    metrics_rows,
    read_result_folder,
)


@pytest.mark.parametrize(
    "name, expected",
    [("soft tissue", (-160.0, 240.0)), ("bone", (-500.0, 1300.0)), ("lung", (-1350.0, 150.0))],
)
def test_ct_presets(name, expected):
    assert display.preset_range(name) == expected


def test_auto_levels_take_percentiles_and_survive_a_constant_image():
    values = np.arange(1001, dtype=np.float32)
    low, high = display.auto_levels(values, (1.0, 99.0))
    assert low == pytest.approx(10.0) and high == pytest.approx(990.0)
    assert display.auto_levels(np.full(10, 7.0)) == (6.5, 7.5)


def test_to_unit_clips():
    np.testing.assert_allclose(
        display.to_unit(np.array([-5.0, 0, 5, 10, 20]), 0, 10), [0, 0, 0.5, 1, 1]
    )


GRID_3D = Grid((4, 5, 6), (3.0, 2.0, 1.0))


@pytest.mark.parametrize(
    "plane, shape, spacing, count",
    [
        ("axial", (5, 6), (2.0, 1.0), 4),
        ("coronal", (4, 6), (3.0, 1.0), 5),
        ("sagittal", (4, 5), (3.0, 2.0), 6),
    ],
)
def test_planes_cut_the_grid(plane, shape, spacing, count):
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    assert GRID_3D.extract(volume, plane, 1).shape == shape
    assert GRID_3D.slice_shape(plane) == shape
    assert GRID_3D.pixel_spacing(plane) == spacing
    assert GRID_3D.slice_count(plane) == count


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_display_position_round_trips_and_matches_the_slice(plane):
    volume = np.random.default_rng(0).random((4, 5, 6))
    for voxel in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        index, row, col = GRID_3D.to_display(plane, voxel)
        assert GRID_3D.to_voxel(plane, index, row, col) == voxel
        assert GRID_3D.extract(volume, plane, index)[row, col] == volume[voxel]


def test_coronal_and_sagittal_put_superior_at_the_top():
    volume = np.zeros((4, 5, 6))
    volume[-1] = 1.0  # the most superior slice (largest z)
    assert GRID_3D.extract(volume, "coronal", 0)[0].all()
    assert GRID_3D.extract(volume, "sagittal", 0)[0].all()
    # a displacement towards +z points up the screen: negative rows
    field = np.zeros((3, 4, 5, 6))
    field[0] = 1.0
    u_row, u_col = GRID_3D.vectors(field, "coronal", 2)
    assert (u_row == -1).all() and (u_col == 0).all()


def test_a_2d_grid_has_one_view():
    grid = Grid((7, 9), (1.5, 1.5))
    assert grid.planes == ("slice",)
    assert grid.slice_count("slice") == 1
    assert grid.to_voxel("slice", 0, 3, 4) == (3, 4)
    with pytest.raises(ValueError, match="only the 'slice' view"):
        grid.extract(np.zeros((7, 9)), "axial", 0)


def test_to_voxel_clamps_to_the_grid():
    assert GRID_3D.to_voxel("axial", 2, -3, 99) == (2, 0, 5)


def test_blend_and_difference():
    fixed, moving = np.full((2, 2), 0.2), np.full((2, 2), 0.8)
    np.testing.assert_allclose(display.blend(fixed, moving, 0.0), fixed)
    np.testing.assert_allclose(display.blend(fixed, moving, 1.0), moving)
    np.testing.assert_allclose(display.blend(fixed, moving, 0.5), 0.5)
    np.testing.assert_allclose(display.difference(fixed, fixed), 0.5)
    np.testing.assert_allclose(display.difference(fixed, moving), 0.2)


def test_edges_of_a_step_are_one_pixel_wide():
    step = np.zeros((10, 10))
    step[:, 5:] = 1.0
    edges = display.edge_mask(step)
    columns = np.flatnonzero(edges.any(axis=0))
    assert len(columns) == 1 and columns[0] in (4, 5)
    assert edges[:, columns[0]].all()
    assert not display.edge_mask(np.ones((10, 10))).any()


def test_grid_lines_without_displacement_are_straight_and_evenly_spaced():
    zero = np.zeros((20, 30))
    x, y = display.grid_lines(zero, zero, spacing=(1.0, 2.0), grid_mm=10.0)
    lines = np.split(np.arange(len(x)), np.flatnonzero(np.isnan(x)) + 1)
    lines = [index[:-1] for index in lines if len(index) > 1]
    # rows at 0, 10 mm (pixels 0, 10); columns at 0, 10, ..., 50 mm (pixels 0, 5, ..., 25)
    assert len(lines) == 2 + 6
    horizontal = [np.unique(y[index]) for index in lines[:2]]
    assert [h.tolist() for h in horizontal] == [[0.5], [10.5]]
    vertical = [np.unique(x[index]) for index in lines[2:]]
    assert [v.tolist() for v in vertical] == [[1.0], [11.0], [21.0], [31.0], [41.0], [51.0]]


def test_grid_lines_move_with_the_displacement():
    zero = np.zeros((20, 30))
    shift_row, shift_col = np.full((20, 30), 2.0), np.full((20, 30), -1.0)
    x0, y0 = display.grid_lines(zero, zero, spacing=(1.0, 2.0), grid_mm=10.0)
    x1, y1 = display.grid_lines(shift_row, shift_col, spacing=(1.0, 2.0), grid_mm=10.0)
    np.testing.assert_array_equal(np.isnan(x1), np.isnan(x0))
    finite = ~np.isnan(x0)
    np.testing.assert_allclose((y1 - y0)[finite], 2.0 * 1.0)  # pixels times mm per pixel
    np.testing.assert_allclose((x1 - x0)[finite], -1.0 * 2.0)


def test_jacobian_colours_show_shrinking_expansion_and_folding():
    base = np.full((1, 4), 0.5)
    det = np.array([[1.0, 0.5, 2.0, -0.1]])
    rgb = display.jacobian_colours(base, det).astype(int)
    assert rgb[0, 0].tolist() == [128, 128, 128]  # det 1: the image as it is
    assert rgb[0, 1, 2] > rgb[0, 1, 0]  # det < 1: blue
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # det > 1: red
    assert tuple(rgb[0, 3]) == display.FOLDING_COLOUR


def test_label_outlines_follow_the_boundary():
    labels = np.zeros((7, 7), int)
    labels[2:5, 2:5] = 3
    base = display.gray(np.zeros((7, 7)))
    out = display.label_outlines(base, labels)
    painted = (out != 0).any(axis=-1)
    expected = labels > 0
    expected[3, 3] = False  # the inside of the square is not outline
    np.testing.assert_array_equal(painted, expected)
    assert tuple(out[2, 2]) == display.label_colour(3)


def _layers(with_result: bool = True) -> SliceLayers:
    rng = np.random.default_rng(1)
    fixed, moving = rng.random((12, 16)), rng.random((12, 16))
    layers = SliceLayers(fixed=fixed, moving=moving, spacing=(1.0, 1.0))
    if with_result:
        layers.jacobian = np.linspace(-0.5, 2.0, 12 * 16).reshape(12, 16)
        layers.u_row = np.zeros((12, 16))
        layers.u_col = np.zeros((12, 16))
        layers.labels = np.zeros((12, 16), int)
        layers.labels[3:9, 4:10] = 2
    return layers


@pytest.mark.parametrize("mode", display.VIEW_MODES)
def test_every_mode_renders_rgb(mode):
    layers = _layers()
    rgb = display.render(mode, layers, RenderOptions(blend=0.3, tile_mm=4.0))
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8
    fixed_only = display.gray(layers.fixed)
    if mode in ("fixed", "grid"):  # the grid is drawn as vectors over the fixed image
        np.testing.assert_array_equal(rgb, fixed_only)
    else:
        assert not np.array_equal(rgb, fixed_only)


@pytest.mark.parametrize("mode", ["moving", "blend", "jacobian", "grid", "labels"])
def test_a_mode_without_its_layer_shows_the_fixed_image(mode):
    layers = _layers(with_result=False)
    if mode in ("moving", "blend"):
        layers.moving = None
    assert not display.available(mode, layers)
    np.testing.assert_array_equal(display.render(mode, layers), display.gray(layers.fixed))


def test_bad_mode():
    with pytest.raises(ValueError, match="view mode must be one of"):
        display.render("sepia", _layers())


def test_displacement_to_voxels_uses_spacing_and_direction():
    # 2D, x axis flipped, spacing (2, 3) mm: d = (4, 6) mm is (-2, +2) voxels along (x, y)
    field = sitk.Image([5, 4], sitk.sitkVectorFloat64, 2)
    field.SetSpacing((2.0, 3.0))
    field.SetDirection((-1.0, 0.0, 0.0, 1.0))
    array = np.zeros((4, 5, 2))
    array[..., 0], array[..., 1] = 4.0, 6.0
    image = sitk.GetImageFromArray(array, isVector=True)
    image.CopyInformation(field)
    voxels = displacement_voxels(image)
    assert voxels.shape == (2, 4, 5)
    np.testing.assert_allclose(voxels[0], 2.0)  # array axis 0 is y
    np.testing.assert_allclose(voxels[1], -2.0)  # array axis 1 is x


def test_scene_readout_names_position_in_mm_and_units(small_pair_2d):
    scene = Scene()
    scene.set_fixed(make_layer(small_pair_2d.ct))
    scene.set_moving(make_layer(small_pair_2d.mr))
    text = scene.describe((32, 32), "before")
    assert text.startswith("(") and " mm" in text
    assert " HU" in text and " a.u." in text
    x, y = scene.physical_point((32, 32))
    assert f"{x:.1f}, {y:.1f}" in text
    assert scene.states() == ("before",)


def test_metrics_rows_from_a_report():
    report = {
        "nmi": {"before": 1.1, "after_initial": 1.2, "after": 1.3},
        "jacobian": {"nonpositive_fraction": 0.001, "sdlogj": 0.05, "min": 0.5, "max": 1.5},
        "timings_s": {"refine": 2.0, "total": 3.0},
    }
    rows = dict(metrics_rows(report))
    assert rows["NMI before"] == "1.1000" and rows["NMI after"] == "1.3000"
    assert rows["Folding (det ≤ 0)"] == "0.100 %"
    assert rows["time total"] == "3.00 s" and rows["time refine"] == "2.00 s"
    assert metrics_rows({}) == []


def test_bad_result_folders(tmp_path):
    with pytest.raises(IntermodalError, match="result folder not found"):
        read_result_folder(tmp_path / "absent")
    with pytest.raises(IntermodalError, match=r"not an intermodal output folder \(missing report"):
        read_result_folder(tmp_path)
    for name in ("warped.nii.gz", "jacobian.nii.gz", "displacement.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(IntermodalError, match="report.json: not a readable JSON report"):
        read_result_folder(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"nmi": {}}))
    with pytest.raises(IntermodalError, match="displacement.nii.gz"):
        read_result_folder(tmp_path)
