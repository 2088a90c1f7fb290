"""Pure tensor operations on images and displacement fields (2D and 3D).

Displacements are ``(B, ndim, *spatial)`` in voxels, channel ``i`` along array axis ``i``,
and warp backwards: ``warped(x) = moving(x + u(x))``. See ``docs/conventions.md``.
"""

from intermodal.spatial.functional import (
    PointSampler,
    SpatialArgumentError,
    coarse_positions,
    downsample_image,
    gaussian_smooth,
    identity_grid,
    integrate_velocity,
    jacobian_det,
    physical_to_voxel,
    resize_displacement,
    sample_points,
    voxel_to_physical,
    warp,
)

__all__ = [
    "PointSampler",
    "SpatialArgumentError",
    "coarse_positions",
    "downsample_image",
    "gaussian_smooth",
    "identity_grid",
    "integrate_velocity",
    "jacobian_det",
    "physical_to_voxel",
    "resize_displacement",
    "sample_points",
    "voxel_to_physical",
    "warp",
]
