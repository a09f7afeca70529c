"""fundus2video: fluorescein angiography (FFA) videos from colour fundus photos (CF).

A PyTorch Lightning framework around the Fundus2Video method (MICCAI 2024): an autoregressive
pix2pixHD-style GAN guided by an unsupervised knowledge mask.
"""

import os

# albumentations otherwise asks the network for updates when imported
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    """`fundus2video.generate_video(s)` without importing torch at `import fundus2video`."""
    if name in ("generate_video", "generate_videos"):
        from fundus2video import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'fundus2video' has no attribute '{name}'")
