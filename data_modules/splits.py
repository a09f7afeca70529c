"""Train/val/test splits grouped by patient, written as `split.csv` and read back.

Both eyes (and every visit) of a patient land in the same split, so no test patient was seen
in training. The authors' release splits 90/5/5 by patient with seed 7; so does the default.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fundus2video.errors import DataError
from fundus2video.io import atomic_path

SPLITS = ("train", "val", "test")


def split_by_patient(patients: dict[str, str], fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                     seed: int = 7) -> dict[str, str]:
    """{case_id: patient_id} -> {case_id: split}.

    Patients are shuffled with `seed` and cut by the fractions, rounded so that every split with
    a non-zero fraction gets at least one patient when there are enough patients.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(patients.values()))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n = len(order)
    counts = [int(round(f * n)) for f in fractions[1:]]  # val, test
    for i, f in enumerate(fractions[1:]):
        if f > 0 and counts[i] == 0 and n - sum(counts) > 1:
            counts[i] = 1
    n_val, n_test = counts
    n_train = n - n_val - n_test
    by_patient = {p: "train" for p in order[:n_train]}
    by_patient.update({p: "val" for p in order[n_train:n_train + n_val]})
    by_patient.update({p: "test" for p in order[n_train + n_val:]})
    return {case: by_patient[patient] for case, patient in patients.items()}


def write_split(path: str | Path, patients: dict[str, str], split: dict[str, str]) -> Path:
    """Write `case_id,patient_id,split` rows (sorted by case) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "patient_id", "split"])
        for case in sorted(split):
            writer.writerow([case, patients[case], split[case]])
    return Path(path)


def read_split(path: str | Path, patients: dict[str, str]) -> dict[str, str]:
    """Read a `split.csv` back; every case of the data must be listed, with a known split."""
    from fundus2video.data_modules.cases import read_csv_rows

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.split.file: not found: {path} (expected a split.csv with case_id, patient_id, split)")
    try:
        rows = read_csv_rows(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data.split.file: {path}: not a CSV ({err})") from None
    if not rows or not {"case_id", "split"} <= set(rows[0][1]):
        raise DataError(f"data.split.file: {path}: expected columns case_id, patient_id, split"
                        + (f" (found {', '.join(rows[0][1])})" if rows else " (the file has no rows)"))
    split = {r["case_id"].strip(): r["split"].strip() for _, r in rows}
    bad = sorted({s for s in split.values() if s not in SPLITS})
    if bad:
        raise DataError(f"data.split.file: {path}: unknown split names {bad} (expected {', '.join(SPLITS)})")
    missing = sorted(set(patients) - set(split))
    if missing:
        raise DataError(f"data.split.file: {path}: {len(missing)} case(s) of the data are not in the split file, "
                        f"e.g. {', '.join(missing[:3])}")
    return {case: split[case] for case in patients}


def check_disjoint(patients: dict[str, str], split: dict[str, str]) -> None:
    """Raise if any patient has cases in two splits."""
    seen: dict[str, str] = {}
    for case, s in split.items():
        other = seen.setdefault(patients[case], s)
        if other != s:
            raise DataError(f"patient {patients[case]} is in both '{other}' and '{s}' (case {case}): a split "
                            "must keep each patient's cases together (data.split.file)")
