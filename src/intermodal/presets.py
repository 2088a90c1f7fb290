"""Named registration settings, per image dimension: ``--preset`` and :func:`preset_settings`.

A plain mapping with no heavy imports, so that the desktop app can fill its panel without
importing torch; :func:`intermodal.registration.preset_settings` turns a preset into
:class:`~intermodal.registration.Settings`.

There is one preset, ``default``: the defaults are meant to be both the most accurate and fast,
so that no preset has to trade one for the other. The former ``smooth`` and ``fast`` presets
were chosen on the synthetic pelvis alone; ``smooth``'s regularisation is now the default's,
and ``fast`` was not measured on realistic data. A preset comes back only with a clear purpose
measured on the realistic sets (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[int, dict[str, Any]]] = {"default": {2: {}, 3: {}}}

PRESET_NAMES = tuple(PRESETS)

ALIGNMENT_METHODS = ("none", "moments", "rigid", "affine")
"""The initial alignments that :mod:`intermodal.alignment` computes, here for the CLI without
torch."""

INIT_CHOICES = (*ALIGNMENT_METHODS, "auto")
"""``--init``'s choices: an alignment method, or ``"auto"``: the rigid alignment, or the affine
one started from it when scaling and shear raise MI *and* the refinement's own similarity
prefers it (:func:`intermodal.registration.register` decides, and its report says which).
The default is ``"rigid"`` (:class:`intermodal.registration.Settings`)."""
