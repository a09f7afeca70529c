"""One file per loss: a pure function on tensors plus a thin `nn.Module`."""

from fundus2video.losses.adversarial import LSGANLoss, lsgan_loss
from fundus2video.losses.feature_matching import FeatureMatchingLoss, feature_matching_loss
from fundus2video.losses.reconstruction import L1Loss, l1_loss

__all__ = ["FeatureMatchingLoss", "L1Loss", "LSGANLoss", "feature_matching_loss", "l1_loss", "lsgan_loss"]
