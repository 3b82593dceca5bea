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
    "vidlab.recipes.gdt",
    "vidlab.recipes.gdt_finetune",
)

for _module in RECIPE_MODULES:
    importlib.import_module(_module)
