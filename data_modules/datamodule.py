"""`Fundus2VideoDataModule`: train/val/test loaders of paired CF photos and FFA videos."""

from __future__ import annotations

import lightning as L
from fundus2video.data_modules.datasets import PhantomVideoDataset
from torch.utils.data import DataLoader


class Fundus2VideoDataModule(L.LightningDataModule):
    """Serves the configured data source; `data` is the `data` section of the experiment."""

    def __init__(self, data: dict):
        super().__init__()
        self.cfg = data
        self.datasets: dict[str, PhantomVideoDataset] = {}

    def _make(self, split: str) -> PhantomVideoDataset:
        cfg, ph = self.cfg, self.cfg["phantom"]
        return PhantomVideoDataset(split, ph[f"n_{split}"], cfg["size"], cfg["n_frames"], ph["seed"],
                                   ph["render_size"], cfg["km_threshold"],
                                   hflip=cfg["hflip"] and split == "train")

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = self._make(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        workers = self.cfg["num_workers"]
        return DataLoader(self.datasets[split], batch_size=self.cfg["batch_size"], shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0,
                          drop_last=shuffle and len(self.datasets[split]) > self.cfg["batch_size"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def windows_per_video(self) -> float:
        """Mean generator steps per training video, for schedules counted in generator steps."""
        self.setup()
        return self.datasets["train"].windows_per_video()
