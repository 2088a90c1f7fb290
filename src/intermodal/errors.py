"""Exceptions raised for problems a user can fix.

Every error the command line reports in one line (without a traceback) is an
:class:`IntermodalError`. Library code raises these with a message that names
the file or argument and says what is wrong with it.
"""

from __future__ import annotations


class IntermodalError(Exception):
    """A problem with the user's input, files or settings."""


class ImageReadError(IntermodalError):
    """An image file or DICOM directory cannot be read or is not usable."""


class OutputExistsError(IntermodalError):
    """An output already exists and overwriting was not requested."""
