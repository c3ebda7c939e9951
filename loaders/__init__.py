"""Datasets -> FFCV .beton files -> batches on the device; installed as `fastvit.loaders`.

Names are resolved lazily so that `import fastvit.loaders` does not import ffcv (which, as a side
effect, sets torch's thread count to 1).
"""

import importlib

_EXPORTS = {
    "DATASETS": "fastvit.loaders.prepare",
    "prepare": "fastvit.loaders.prepare",
    "ensure_prepared": "fastvit.loaders.prepare",
    "info": "fastvit.loaders.prepare",
    "load_arrays": "fastvit.loaders.beton",
    "read_meta": "fastvit.loaders.beton",
    "ResidentLoader": "fastvit.loaders.pipeline",
    "FFCVLoader": "fastvit.loaders.pipeline",
    "make_loader": "fastvit.loaders.pipeline",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # importing the submodule `prepare` rebinds this package's `prepare` to the module: pin the function
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastvit.loaders' has no attribute {name!r}")
