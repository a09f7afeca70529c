"""`data check` on cases with a lesion mask: the knowledge mask's IoU with the dynamic lesions, per case
and over the set, on hand-made cases whose answer is known."""

import math

import cv2
import numpy as np
import pytest

from fundus2video.data_modules.cases import folder_records
from fundus2video.data_modules.check import check_records, format_table
from fundus2video.data_modules.datasets import FileVideoDataset
from fundus2video.data_modules.transforms import PairedTransform
from fundus2video.metrics.kinetics import LesionKinetics

SIZE, T = 32, 6
BRIGHT = (slice(8, 16), slice(8, 16))  # the region that fills with dye: the knowledge mask


def _case(root, name: str, lesion: tuple[slice, slice] | None, empty_lesion: bool = False,
          moving: bool = True) -> None:
    """A case whose field of view is the whole picture (so nothing is cropped or resized at SIZE):
    an orange-red CF with some texture, frames of grey 60 where BRIGHT turns 200 from the third frame."""
    case = root / name
    (case / "ffa").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 30, SIZE), (SIZE, 1))
    cf = np.stack([170 + ramp, 90 + ramp / 3, np.full_like(ramp, 40)], -1).astype(np.uint8)  # RGB
    cv2.imwrite(str(case / "cf.png"), cf[..., ::-1])
    for t in range(T):
        frame = np.full((SIZE, SIZE), 60, np.uint8)
        frame[0, 0] = 0  # an angiogram is never one grey level (data check refuses such a frame)
        if moving and t >= 2:
            frame[BRIGHT] = 200
        cv2.imwrite(str(case / "ffa" / f"{t:03d}.png"), frame)
    if lesion is not None or empty_lesion:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if lesion is not None:
            mask[lesion] = 255
        cv2.imwrite(str(case / "lesion.png"), mask)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("km_lesion")
    _case(root, "a_same", BRIGHT)
    _case(root, "b_disjoint", (slice(20, 28), slice(20, 28)))
    _case(root, "c_half", (slice(8, 16), slice(12, 20)))  # 32 px shared, 96 in the union
    _case(root, "d_no_mask", None)
    _case(root, "e_both_empty", None, empty_lesion=True, moving=False)
    return root


def test_the_knowledge_mask_is_measured_against_the_lesion_mask(root):
    reports = {r.case_id: r for r in check_records(folder_records(root), size=SIZE, min_frames=4, per_phase=4,
                                                   n_frames=T, km_threshold=45 / 255, progress=False)}
    assert all(r.ok for r in reports.values()), [r.problem for r in reports.values()]
    assert reports["a_same"].km_lesion_iou == 1
    assert reports["b_disjoint"].km_lesion_iou == 0
    assert reports["c_half"].km_lesion_iou == pytest.approx(32 / 96)
    assert math.isnan(reports["d_no_mask"].km_lesion_iou)  # no lesion mask: nothing to compare
    assert math.isnan(reports["e_both_empty"].km_lesion_iou)
    table = format_table(list(reports.values()), T)
    header = table.splitlines()[0].split()
    assert "km/lesion" in header
    cells = {line.split()[0]: line.split()[header.index("km/lesion")] for line in table.splitlines()[2:7]}
    assert cells == {"a_same": "1.00", "b_disjoint": "0.00", "c_half": "0.33", "d_no_mask": "-", "e_both_empty": "-"}
    assert ("knowledge mask vs lesion mask: IoU median 0.33 (min 0.00, max 1.00) over 3 case(s) with a lesion mask"
            in table.splitlines())


def test_the_check_agrees_with_the_kinetics_km_iou_of_the_samples(root):
    """`data check` and `evaluate`'s km_iou measure the same thing on the same case."""
    records = [r for r in folder_records(root) if r.lesion is not None]
    reports = check_records(records, size=SIZE, min_frames=4, per_phase=4, n_frames=T, km_threshold=45 / 255,
                            progress=False)
    ds = FileVideoDataset(records, SIZE, T, 4, False, PairedTransform(SIZE, train=False))
    for i, report in enumerate(reports):
        sample = ds[i]
        video = (sample["frames"] + 1) / 2
        row = LesionKinetics().update(video, video, sample)
        assert (math.isnan(row["km_iou"]) and math.isnan(report.km_lesion_iou)
                or row["km_iou"] == pytest.approx(report.km_lesion_iou)), report.case_id
