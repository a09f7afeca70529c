"""Data: the synthetic phantom, datasets and the Lightning DataModule."""

from fundus2video.data_modules.datamodule import Fundus2VideoDataModule
from fundus2video.data_modules.datasets import PhantomVideoDataset, to_sample

__all__ = ["Fundus2VideoDataModule", "PhantomVideoDataset", "to_sample"]
