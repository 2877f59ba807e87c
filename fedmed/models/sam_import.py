"""Import `segment_anything.modeling` with or without torchvision.

`import segment_anything` runs the package `__init__`, which imports the predictor and the automatic
mask generator, and those import torchvision. The model classes (`segment_anything.modeling`) need none
of it. When torchvision is missing we register an empty package module for `segment_anything` whose
`__path__` points at the installed package, so its submodules import without the `__init__`.
This is the only place in fedmed that imports segment_anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class SamImportError(ImportError):
    """segment-anything is not installed."""


def _register_package_without_init() -> None:
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise SamImportError("segment-anything is not installed: pip install segment-anything")
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["segment_anything"] = package


def import_sam_modeling() -> types.ModuleType:
    """Return the `segment_anything.modeling` module, whether or not torchvision is installed."""
    if "segment_anything" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _register_package_without_init()
    return importlib.import_module("segment_anything.modeling")
