"""Named registration settings, per image dimension: ``--preset`` and :func:`preset_settings`.

A plain mapping with no heavy imports, so that the desktop app can fill its panel without
importing torch; :func:`intermodal.registration.preset_settings` turns a preset into
:class:`~intermodal.registration.Settings`. The bundled 2D and 3D models and the images differ,
so each preset has values for 2D and for 3D. Each was chosen on the tuning pairs (synthetic
dataset seed 6) alone and is measured on the held-out pairs in benchmarks/RESULTS.md (sections
tuning_*_fast, tuning_*_volume and compare_*):

- ``default``: the most accurate; its fields are rougher than ANTs' (SDlogJ about 0.2).
- ``smooth``: a volume-change penalty and half the diffusion weight: SDlogJ under 0.1 for
  about 0.03 less Dice, at the same speed.
- ``fast``: in 3D the refinement alone (the bundled 3D network does not help it) on a 4 mm
  grid, 18 steps at a tenth of the voxels; in 2D the network after a moments init and 6
  refinement steps. In 3D under a tenth of ANTs SyNRA's time on the held-out synthetic pelvis
  (compare_heldout3d; 0.067 of it over 20 pairs in heldout3d_fast20, none of them above a
  tenth), less accurate than ``default`` and rougher (SDlogJ about 0.3 in 3D).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "default": {2: {}, 3: {}},
    "smooth": {
        2: {"volume_penalty": 0.6, "smoothness": 0.5},
        3: {"volume_penalty": 0.4, "smoothness": 0.5},
    },
    "fast": {
        2: {"init": "moments", "refine": 6, "learning_rate": 0.3, "integration_steps": 3},
        3: {
            "model": None,
            "init": "moments",
            "spacing": 4.0,
            "sampling": 0.1,
            "refine": 18,
            "learning_rate": 0.45,
            "integration_steps": 3,
        },
    },
}

PRESET_NAMES = tuple(PRESETS)
