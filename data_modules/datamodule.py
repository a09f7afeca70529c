"""`Fundus2VideoDataModule`: train/val/test loaders of paired CF photos and FFA videos.

For data on disk, `setup` lists the cases, splits them by patient (or reads a given
`split.csv`), writes `split.csv` into the run directory, and checks every case the way
training reads it: bad cases stop training with a list of reasons, or are left out and
listed when `data.skip_bad_cases` is set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fundus2video.config import AugmentConfig
from fundus2video.data_modules.cases import CaseRecord, folder_records, manifest_records
from fundus2video.data_modules.check import bad_cases_line, bad_cases_message, check_records, short_note
from fundus2video.data_modules.datasets import FileVideoDataset, PhantomVideoDataset
from fundus2video.data_modules.phantom import Nuisances
from fundus2video.data_modules.sampling import SeededSampler
from fundus2video.data_modules.splits import SPLITS, check_disjoint, read_split, split_by_patient, write_split
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.errors import DataError

log = logging.getLogger("fundus2video")


def list_records(data: dict) -> list[CaseRecord]:
    """The cases of a `folders` or `manifest` data source."""
    if data["source"] == "folders":
        records = folder_records(data["root"])
    else:
        m = data["manifest"]
        records = manifest_records(data["root"], m["columns"], m["drop_phases"], m["merge_phases"])
    for rec in records:
        rec.colour_check = data.get("fundus_check", True)
    return records


class Fundus2VideoDataModule(L.LightningDataModule):
    """Serves the configured data source; `data` is the experiment's `data` section (plain
    dict), `min_frames` the fewest frames a case needs (window K + 1), `run_dir` where
    `split.csv` is written."""

    def __init__(self, data: dict, min_frames: int = 2, run_dir: str | Path | None = None, seed: int = 0,
                 evaluation: bool = False):
        super().__init__()
        # evaluation: every split read as validation reads it (no augmentation, no random frame draws),
        # so scores on the training split repeat exactly
        self.cfg, self.min_frames, self.seed, self.evaluation = data, min_frames, seed, evaluation
        self.run_dir = Path(run_dir) if run_dir else None
        self._split: tuple[dict, dict] | None = None  # (case -> patient, case -> split) of case files
        self.datasets: dict[str, Dataset] = {}
        self.samplers: dict[str, SeededSampler] = {}
        self._resume: tuple[int, int] | None = None  # (epoch, training items already seen)

    def _transform(self, split: str) -> PairedTransform:
        train = split == "train" and self.cfg["augment_train"] and not self.evaluation
        return PairedTransform(self.cfg["size"], train=train, cfg=AugmentConfig(**self.cfg["augment"]))

    def _phantom(self) -> dict[str, Dataset]:
        cfg, ph = self.cfg, self.cfg["phantom"]
        nuisances = Nuisances.from_config(ph)
        return {s: PhantomVideoDataset(s, ph[f"n_{s}"], cfg["size"], cfg["n_frames"], ph["seed"],
                                       ph["render_size"], cfg["km_threshold"], self._transform(s), nuisances)
                for s in SPLITS}

    def _files(self) -> dict[str, Dataset]:
        cfg = self.cfg
        records = list_records(cfg)
        if cfg["check"]:
            reports = check_records(records, cfg["size"], self.min_frames, cfg["manifest"]["per_phase"],
                                    cfg["n_frames"], cfg["km_threshold"])
            bad = {r.case_id for r in reports if not r.ok}
            if bad and not cfg["skip_bad_cases"]:
                raise DataError(f"{cfg['root']}: {bad_cases_line(reports)} (`fundus2video data check "
                                f"{cfg['root']}` lists each; fix them, or set data.skip_bad_cases=true to leave "
                                "them out)")
            if bad:
                log.warning("leaving out %s", bad_cases_message(reports))
                records = [r for r in records if r.case_id not in bad]
            if note := short_note([r for r in reports if r.ok], cfg["n_frames"]):
                log.warning("%s", note)
            by_phase = cfg["source"] == "manifest" and cfg["manifest"]["per_phase"] > 0
            lengths = {min(r.n_frames, cfg["n_frames"]) for r in reports if r.ok}
            if cfg["batch_size"] > 1 and (len(lengths) > 1 or by_phase):
                # a batch stacks its videos: they must have one length (the release trains with batch 1)
                why = ("a manifest's frames are drawn per phase, so videos differ in length" if by_phase else
                       f"its cases have {min(lengths)} to {max(lengths)} frames (data.n_frames={cfg['n_frames']})")
                raise DataError(f"{cfg['root']}: data.batch_size={cfg['batch_size']} needs videos of one length, but "
                                f"{why}; use data.batch_size=1, or drop the short cases")
        patients = {r.case_id: r.patient_id for r in records}
        split_cfg = cfg["split"]
        if split_cfg["file"]:
            split = read_split(split_cfg["file"], patients)
        else:
            split = split_by_patient(patients, tuple(split_cfg["fractions"]), split_cfg["seed"])
        check_disjoint(patients, split)
        self._split = (patients, split)
        if self.run_dir is not None:
            self.save_split(self.run_dir)
        out = {}
        for s in SPLITS:
            recs = [r for r in records if split[r.case_id] == s]
            out[s] = FileVideoDataset(recs, cfg["size"], cfg["n_frames"], cfg["manifest"]["per_phase"],
                                      train=s == "train" and not self.evaluation, transform=self._transform(s),
                                      km_threshold=cfg["km_threshold"])
        sizes = {s: len(d) for s, d in out.items()}
        log.info("cases per split: %s", sizes)
        where = (f"data.split.file {split_cfg['file']}" if split_cfg["file"]
                 else f"data.split.fractions {tuple(split_cfg['fractions'])}")
        if sizes["train"] == 0:
            raise DataError(f"{cfg['root']}: no training cases after the split {sizes} ({where})")
        if sizes["val"] == 0 and not self.evaluation:
            log.warning("no validation cases after the split %s (%s): training runs without val/ scores, sample "
                        "videos or knowledge-mask pictures", sizes, where)
        return out

    def lesion_cases(self, split: str = "train") -> tuple[int, int]:
        """(cases of `split` with a lesion mask, cases of `split`): for `model.mask_source=lesion`."""
        self.setup()
        data = self.datasets[split]
        if isinstance(data, FileVideoDataset):
            return sum(r.lesion is not None for r in data.records), len(data)
        return len(data), len(data)  # the phantom draws every case's lesion mask

    def save_split(self, run_dir: str | Path) -> None:
        """Write the patient split of case files to `run_dir`/split.csv (the phantom has none)."""
        self.run_dir = Path(run_dir)
        if self._split is not None:
            write_split(self.run_dir / "split.csv", *self._split)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = self._phantom() if self.cfg["source"] == "phantom" else self._files()
            for dataset in self.datasets.values():
                dataset.register = self.cfg["register_model"] if self.cfg.get("register") else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Order and per-sample seeds from `SeededSampler` (exact resume, DDP sharding)."""
        self.setup()
        workers = self.cfg["num_workers"]
        # training shards are padded to equal length (every rank steps alike); evaluation counts each case once
        sampler = self.samplers[split] = SeededSampler(len(self.datasets[split]), self.seed, shuffle,
                                                       pad=split == "train")
        if split == "train" and self._resume is not None:
            sampler.skip(self._resume[1], epoch=self._resume[0])
        return DataLoader(self.datasets[split], batch_size=self.cfg["batch_size"], sampler=sampler,
                          num_workers=workers, persistent_workers=workers > 0,
                          # page-locked batches copy to a GPU asynchronously; nothing to gain without one
                          pin_memory=bool(self.cfg.get("pin_memory", True)) and torch.cuda.is_available(),
                          drop_last=shuffle and len(sampler) > self.cfg["batch_size"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: where in which epoch training stands (mid-epoch resume)."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        epochs = loop.epoch_progress.current
        # between epochs (the epoch-end checkpoint) the batch counters still describe the finished one
        done = loop.epoch_loop.batch_progress.current.processed if epochs.ready > epochs.completed else 0
        return {"epoch": epochs.completed, "train_items_seen": done * self.cfg["batch_size"]}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self._resume = (int(state["epoch"]), int(state["train_items_seen"]))
            if "train" in self.samplers:
                self.samplers["train"].skip(self._resume[1], epoch=self._resume[0])

    def windows_per_video(self) -> float:
        """Mean generator steps per training video, for schedules counted in generator steps."""
        self.setup()
        return self.datasets["train"].windows_per_video()
