"""The on-the-fly pair generator: determinism, exact CT/MR alignment, the known motion of
subject j, both directions, each label source, and every refused setting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from intermodal.data import generator as generator_module
from intermodal.data import render
from intermodal.data.generator import (
    GeneratedPairs,
    GeneratorConfig,
    PairGenerator,
    collate_pairs,
    pair_displacement,
)
from intermodal.errors import IntermodalError
from intermodal.spatial import identity_grid, jacobian_det, warp
from intermodal.training.config import load_config
from intermodal.training.pairs import generated_batch

SMALL_2D = {"shape": [32, 32], "spacing": 6.0}
SMALL_3D = {"shape": [16, 24, 24], "spacing": 8.0}
NO_MOTION = {
    "affine_degrees": 0.0,
    "affine_scale": 0.0,
    "affine_shift_mm": 0.0,
    "large_velocity_mm": 0.0,
    "small_velocity_mm": 0.0,
}
IMAGES = ("moving_ct", "moving_mr", "fixed_ct", "fixed_mr")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fields(pair) -> dict[str, torch.Tensor]:
    names = (*IMAGES, "moving_labels", "fixed_labels", "displacement")
    return {name: getattr(pair, name) for name in names}


@pytest.mark.parametrize("grid", [SMALL_2D, SMALL_3D])
def test_same_seed_and_index_give_the_same_pair(grid):
    generator = PairGenerator(GeneratorConfig(**grid))
    first, again = generator.pair(3, seed=5), PairGenerator(GeneratorConfig(**grid)).pair(3, seed=5)
    for name, value in _fields(first).items():
        assert torch.equal(value, _fields(again)[name]), name
    assert first.source == again.source
    for other in (generator.pair(4, seed=5), generator.pair(3, seed=6)):
        assert not torch.equal(first.moving_ct, other.moving_ct)


@pytest.mark.parametrize("grid", [SMALL_2D, SMALL_3D])
def test_images_are_unit_range_on_the_grid(grid):
    pair = PairGenerator(GeneratorConfig(**grid)).pair(0, seed=0)
    for name in IMAGES:
        image = getattr(pair, name)
        assert image.shape == tuple(grid["shape"]) and image.dtype == torch.float32, name
        assert 0 <= float(image.min()) and float(image.max()) <= 1, name
    assert pair.displacement.shape == (len(grid["shape"]), *grid["shape"])
    assert pair.seconds > 0


@pytest.mark.parametrize("source", ["shapes", "pelvis"])
def test_ct_and_mr_of_a_subject_are_rendered_from_its_one_label_map(source, monkeypatch):
    """Every CT and MR is painted from the label map returned with it, nothing else."""
    calls: dict[str, list[np.ndarray]] = {"ct": [], "mr": []}
    real_ct, real_mr = render.render_ct, render.render_mr

    def spy_ct(labels, rng, **kwargs):
        calls["ct"].append(labels.copy())
        return real_ct(labels, rng, **kwargs)

    def spy_mr(labels, rng, **kwargs):
        calls["mr"].append(labels.copy())
        return real_mr(labels, rng, **kwargs)

    monkeypatch.setattr(render, "render_ct", spy_ct)
    monkeypatch.setattr(render, "render_mr", spy_mr)
    weights = {f"{name}_weight": float(name == source) for name in ("shapes", "pelvis", "ct")}
    config = GeneratorConfig(**SMALL_3D, **weights)
    pair = PairGenerator(config).pair(1, seed=2)
    assert pair.source == source
    (ct_labels,), (mr_labels,) = calls["ct"], calls["mr"]
    assert np.array_equal(ct_labels, mr_labels)
    depth = config.shape[0]
    np.testing.assert_array_equal(ct_labels[:depth], pair.moving_labels.numpy())
    np.testing.assert_array_equal(ct_labels[-depth:], pair.fixed_labels.numpy())
    assert not ct_labels[depth:-depth].any(), "the gap between the subjects is air"


def test_two_d_subjects_are_rendered_as_two_separate_slices(monkeypatch):
    calls = []
    real_ct = render.render_ct

    def spy_ct(labels, rng, **kwargs):
        calls.append((labels.copy(), kwargs["spacing"]))
        return real_ct(labels, rng, **kwargs)

    monkeypatch.setattr(render, "render_ct", spy_ct)
    pair = PairGenerator(GeneratorConfig(**SMALL_2D)).pair(0, seed=0)
    ((labels, spacing),) = calls
    np.testing.assert_array_equal(labels[0], pair.moving_labels.numpy())
    np.testing.assert_array_equal(labels[1], pair.fixed_labels.numpy())
    assert spacing[2] >= 40, "slices far apart: nothing blurs from one subject to the other"


@pytest.mark.parametrize("grid", [SMALL_2D, SMALL_3D])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_subject_j_is_subject_i_labels_warped_by_the_returned_field(grid, index):
    pair = PairGenerator(GeneratorConfig(**grid)).pair(index, seed=9)
    warped = warp(
        pair.moving_labels[None, None],
        pair.displacement[None],
        mode="nearest",
        padding_mode="zeros",
    )[0, 0]
    assert torch.equal(warped, pair.fixed_labels)
    assert float(pair.displacement.abs().max()) > 0.5, "subject j has moved"
    assert not torch.equal(pair.moving_labels, pair.fixed_labels)


def test_no_motion_gives_a_zero_field_and_the_same_labels():
    pair = PairGenerator(GeneratorConfig(**SMALL_2D, **NO_MOTION)).pair(0, seed=0)
    assert float(pair.displacement.abs().max()) < 1e-5
    assert torch.equal(pair.moving_labels, pair.fixed_labels)
    # the same map, rendered twice: the same tissues, other noise
    assert not torch.equal(pair.moving_mr, pair.fixed_mr)


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_part_is_a_rotation_and_scaling_about_the_centre(ndim):
    """Without velocity the field is ``c + A (x - c) + t - x`` with A close to a rotation."""
    shape = [16] * ndim
    config = GeneratorConfig(
        shape=shape,
        spacing=4.0,
        affine_degrees=20.0,
        affine_scale=0.0,
        affine_shift_mm=8.0,
        large_velocity_mm=0.0,
        small_velocity_mm=0.0,
    )
    displacement = pair_displacement(np.random.default_rng(0), shape, 4.0, config)
    grid = identity_grid(shape).reshape(ndim, -1).double()
    mapped = (grid + displacement.reshape(ndim, -1).double()).T
    # least squares: mapped = [x 1] @ M
    design = torch.cat([grid.T, torch.ones(grid.shape[1], 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, mapped).solution
    matrix, offset = solution[:ndim].T, solution[ndim]
    residual = design @ solution - mapped
    assert float(residual.abs().max()) < 1e-4, "the field is affine"
    eye = torch.eye(ndim, dtype=torch.float64)
    assert torch.allclose(matrix @ matrix.T, eye, atol=1e-5), "a rotation"
    assert math.isclose(float(torch.linalg.det(matrix)), 1.0, abs_tol=1e-5)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(matrix.trace()) - ndim + 2) / 2))))
    assert 0 < angle <= 20 * math.sqrt(3) + 1e-6
    centre = torch.full((ndim,), 7.5, dtype=torch.float64)
    shift = offset + matrix @ centre - centre  # t in voxels
    assert float(shift.abs().max()) <= 8.0 / 4.0 + 1e-5


@pytest.mark.parametrize(
    ("large", "small"), [(8.0, 0.0), (0.0, 3.0), (8.0, 3.0)], ids=["large", "small", "both"]
)
def test_velocity_scales_give_smooth_invertible_motion(large, small):
    config = GeneratorConfig(
        shape=[48, 48],
        spacing=4.0,
        affine_degrees=0.0,
        affine_scale=0.0,
        affine_shift_mm=0.0,
        large_velocity_mm=large,
        small_velocity_mm=small,
    )
    fields = [
        pair_displacement(np.random.default_rng(seed), config.shape, 4.0, config)
        for seed in range(4)
    ]
    largest = max(float(f.abs().max()) for f in fields)
    assert largest > 0.1
    for field in fields:
        assert float(jacobian_det(field[None]).min()) > 0, "no folding"


def test_large_scale_moves_more_smoothly_than_small_scale():
    def roughness(**velocity):
        config = GeneratorConfig(shape=[64, 64], spacing=4.0, **{**NO_MOTION, **velocity})
        field = pair_displacement(np.random.default_rng(1), config.shape, 4.0, config)
        gradient = torch.diff(field, dim=-1).abs().mean()
        return float(gradient) / float(field.abs().mean())

    assert roughness(large_velocity_mm=8.0) < roughness(small_velocity_mm=8.0)


def test_both_directions_alternate_and_reach_the_network():
    dataset = GeneratedPairs(GeneratorConfig(**SMALL_2D), seed=0, length=4, direction="both")
    items = [dataset[k] for k in range(4)]
    assert [item["ct_moving"] for item in items] == [False, True, False, True]
    batch = generated_batch(collate_pairs(items), "cpu")
    assert batch.ct_moving.tolist() == [False, True, False, True]
    for b, ct_moving in enumerate(batch.ct_moving.tolist()):
        acquired = dataset.generator.pair(b, seed=0).acquired
        fixed = acquired["fixed_mr"] if ct_moving else acquired["fixed_ct"]
        moving = acquired["moving_ct"] if ct_moving else acquired["moving_mr"]
        assert torch.equal(batch.network_fixed[b, 0], fixed)
        assert torch.equal(batch.network_moving[b, 0], moving)
    one_way = GeneratedPairs(GeneratorConfig(**SMALL_2D), seed=0, length=2, direction="mr_to_ct")
    assert [one_way.ct_moving(k) for k in range(2)] == [False, False]


@pytest.mark.parametrize("in_loss", [False, True])
def test_couch_and_crops_reach_the_network_not_the_loss(in_loss):
    """A couch does not move with the anatomy: by default only the network's inputs show it."""
    config = GeneratorConfig(
        **SMALL_3D, couch_probability=1.0, crop_probability=0.0, artefacts_in_loss=in_loss
    )
    pair = PairGenerator(config).pair(0, seed=1)
    for name in ("moving_ct", "fixed_ct"):
        labels = pair.moving_labels if name == "moving_ct" else pair.fixed_labels
        changed = pair.acquired[name] != getattr(pair, name)
        if in_loss:
            assert not changed.any()
        else:
            assert changed.any(), "the acquired CT has a couch"
            assert not (changed & (labels > 0)).any(), "the couch lies outside the body"
    for name in ("moving_mr", "fixed_mr"):
        assert torch.equal(pair.acquired[name], getattr(pair, name))


def test_validation_sources_are_taken_in_turn():
    config = GeneratorConfig(**SMALL_2D, pelvis_weight=0.0)
    dataset = GeneratedPairs(config, seed=1, length=4, sources=["shapes", "pelvis"])
    assert [dataset[k]["source"] for k in range(4)] == ["shapes", "pelvis", "shapes", "pelvis"]


def test_items_do_not_depend_on_the_worker_processes():
    dataset = GeneratedPairs(GeneratorConfig(**SMALL_2D), seed=4, length=4)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=1,
        collate_fn=collate_pairs,
        worker_init_fn=generator_module.worker_init,
    )
    in_worker = [batch["moving_ct"] for batch in loader]
    here = [collate_pairs([dataset[k], dataset[k + 1]])["moving_ct"] for k in (0, 2)]
    for a, b in zip(in_worker, here):
        assert torch.equal(a, b)


@pytest.mark.parametrize("grid", [SMALL_2D, SMALL_3D])
def test_pelvis_source_gives_the_phantom_tissues(grid):
    config = GeneratorConfig(**grid, shapes_weight=0.0)
    labels, tissue_of_label = PairGenerator(config).labels(np.random.default_rng(0), "pelvis")
    assert labels.shape == tuple(grid["shape"]) and labels.dtype == np.uint8
    present = set(np.unique(labels).tolist())
    assert {0, 1, 2} <= present and present <= set(range(10))
    assert tissue_of_label[3] == tissue_of_label[4] == render.TISSUE_NAMES.index("bone")


def test_shapes_source_has_the_configured_labels_inside_a_body():
    config = GeneratorConfig(shape=[64, 64], spacing=4.0, shape_labels=5)
    generator = PairGenerator(config)
    for seed in range(3):
        labels, tissue_of_label = generator.labels(np.random.default_rng(seed), "shapes")
        assert set(np.unique(labels).tolist()) <= set(range(6))
        assert len(np.unique(labels)) >= 3
        assert set(tissue_of_label) == set(range(6)) and tissue_of_label[0] == 0


def test_ct_source_gives_the_tissue_classes_of_the_given_ct(tmp_path):
    from intermodal.data.synth import generate_subject
    from intermodal.io import write_image

    subject = generate_subject(5, shape=(40, 40, 32), spacing=5.0)
    path = tmp_path / "ct.nii.gz"
    write_image(subject.ct, path)
    config = GeneratorConfig(
        shape=[24, 32, 32], spacing=5.0, shapes_weight=0, pelvis_weight=0, ct_weight=1,
        ct_files=[str(path)],
    )  # fmt: skip
    pair = PairGenerator(config).pair(0, seed=0)
    assert pair.source == "ct"
    present = set(pair.moving_labels.unique().tolist())
    assert {0, 1, 2, 3} >= present and {0, 2} <= present


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["generator.colour=1"], "generator.colour"),
        (["generator.shape_labels=1"], "generator.shape_labels"),
        (["generator.shape_labels=0"], "generator.shape_labels"),
        (
            ["generator.shapes_weight=0", "generator.pelvis_weight=0"],
            "generator.shapes_weight",
        ),
        (["generator.ct_weight=1"], "generator.ct_files"),
        (['generator.ct_files=["no/such/ct.nii.gz"]'], "generator.ct_files"),
        (["generator.shape=[60, 64]"], "generator.shape"),
        (["generator.shape=[64, 64, 64]"], "generator.shape"),
        (["generator.shape=[4, 8]"], "generator.shape"),
        (["generator.shape=[8192, 8192]"], "generator.shape"),
        (["generator.spacing=0"], "generator.spacing"),
        (["generator.validation_seed=0"], "generator.validation_seed"),
        (["generator.affine_scale=1.5"], "generator.affine_scale"),
        (["generator.large_spacing_mm=0"], "generator.large_spacing_mm"),
        (["generator.shape_feature_mm=[30, 10]"], "generator.shape_feature_mm"),
        (["generator.mr_contrast='t1'"], "generator.mr_contrast"),
        (['generator.validation_sources=["liver"]'], "generator.validation_sources"),
        (['generator.validation_sources=["ct"]'], "generator.ct_files"),
        (["generator.crop_probability=2"], "generator.crop_probability"),
        (["augment.probability=0.5"], "augment.probability"),
        (["data.source=disk"], "data.source"),
    ],
)
def test_bad_generator_config_names_the_key(overrides, key):
    base = ["data.source=generator", "data.dim=2", "generator.shape=[64, 64]"]
    with pytest.raises(IntermodalError, match="config") as error:
        load_config(None, [*base, *overrides])
    message = str(error.value)
    assert f"{key!r}" in message or f"{key} " in message, message
    assert len(message.splitlines()) == 1


def test_bad_generator_config_direct():
    with pytest.raises(IntermodalError, match="generator.shape_labels"):
        PairGenerator(GeneratorConfig(**SMALL_2D, shape_labels=1))
    with pytest.raises(IntermodalError, match="direction"):
        GeneratedPairs(GeneratorConfig(**SMALL_2D), seed=0, length=1, direction="sideways")
