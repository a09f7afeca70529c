"""fundus2video: fluorescein angiography (FFA) videos from colour fundus photos (CF).

A PyTorch Lightning framework around the Fundus2Video method (MICCAI 2024): an autoregressive
pix2pixHD-style GAN guided by an unsupervised knowledge mask.
"""

import os

# albumentations otherwise asks the network for updates when imported
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


# name -> the submodule it lives in, imported on first use: `import fundus2video` stays free of torch
_LAZY = {"generate_video": "inference", "generate_videos": "inference", "load_generator": "hub",
         "LoadedGenerator": "hub", "save_hub": "hub", "Fundus2VideoModule": "module",
         "Fundus2VideoDataModule": "data_modules"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """`from fundus2video import Fundus2VideoModule, load_generator, ...` without importing torch at
    `import fundus2video`."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"fundus2video.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fundus2video' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
