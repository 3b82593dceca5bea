"""vidlab: video and video-language representation learning on one shared pipeline."""

__version__ = "0.1.0"

_LAZY = {
    "create_model": "vidlab.models",
    "list_models": "vidlab.models",
    "create_transforms": "vidlab.models.preprocess",
}
__all__ = ["create_model", "create_transforms", "list_models", "__version__"]


def __getattr__(name: str):
    """Import the model layer (torch, transformers) only when `vidlab.create_model` is first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidlab' has no attribute {name!r}")
