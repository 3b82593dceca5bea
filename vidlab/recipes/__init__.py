"""One recipe per system: composes the shared parts and holds only what is paper-specific.

Importing this package registers every recipe (and its config class) with the engine.
"""

import importlib

RECIPE_MODULES = (
    "vidlab.recipes.fit",
    "vidlab.recipes.clip",
    "vidlab.recipes.evl",
    "vidlab.recipes.singularity",
    "vidlab.recipes.vqvae",
    "vidlab.recipes.vimpac",
)

for _module in RECIPE_MODULES:
    importlib.import_module(_module)
