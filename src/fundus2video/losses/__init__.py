"""One file per loss: a pure function on tensors, plus a thin `nn.Module` where the module holds
one (PatchNCE's functions take the projector and sampler instead); a generator term also registers
itself (terms.py)."""

import importlib
import pkgutil

from fundus2video.losses.adversarial import LSGANLoss, lsgan_loss
from fundus2video.losses.feature_matching import FeatureMatchingLoss, feature_matching_loss
from fundus2video.losses.gradient_variance import GradientVarianceLoss, gradient_variance_loss
from fundus2video.losses.patchnce import mask_enhanced_nce, multilayer_nce, patch_nce_loss
from fundus2video.losses.perceptual import VGGLoss, load_vgg19, vgg_perceptual_loss
from fundus2video.losses.reconstruction import L1Loss, l1_loss

__all__ = ["FeatureMatchingLoss", "GradientVarianceLoss", "L1Loss", "LSGANLoss", "VGGLoss",
           "feature_matching_loss", "gradient_variance_loss", "l1_loss", "load_vgg19", "lsgan_loss",
           "mask_enhanced_nce", "multilayer_nce", "patch_nce_loss", "vgg_perceptual_loss"]

# every file that registers a generator term does so when imported: import them all here, so a new
# term's file needs no line in this one
for _file in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_file.name}")
