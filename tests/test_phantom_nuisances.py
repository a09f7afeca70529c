"""The realistic phantom's nuisances, each checked against the ground truth the case keeps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus2video.data_modules import phantom
from fundus2video.data_modules.phantom import NUISANCES, Nuisances, make_case

SIZE = 128
LATE = np.full(6, 300.0, np.float32)  # every frame at one time: only the nuisances tell frames apart
VENOUS = np.full(6, 40.0, np.float32)  # the same, with bright vessels: motion shows at their edges


def only(name: str) -> Nuisances:
    return Nuisances(**{name: True})


def interior(size: int = SIZE, margin: float = 0.3) -> np.ndarray:
    """The centre of the field, away from the borders a warp fills by reflection."""
    y, x = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return np.hypot(x - c, y - c) < margin * size


def test_aligned_preset_is_no_nuisance():
    assert Nuisances.preset("aligned") == Nuisances() and not Nuisances().any()
    assert all(getattr(Nuisances.preset("realistic"), n) for n in NUISANCES)
    with pytest.raises(ValueError, match="preset 'blurry'"):
        Nuisances.preset("blurry")


def test_from_config_forces_single_nuisances():
    cfg = {"preset": "realistic", **{n: "preset" for n in NUISANCES}, "eye_motion": "off"}
    assert not Nuisances.from_config(cfg).eye_motion and Nuisances.from_config(cfg).exposure
    cfg = {"preset": "aligned", **{n: "preset" for n in NUISANCES}, "exposure": "on"}
    assert Nuisances.from_config(cfg) == only("exposure")


@pytest.mark.parametrize("index", [0, 1])  # a right eye and a (mirrored) left eye
def test_stored_motion_maps_each_frame_onto_frame0(index):
    c = make_case(index, size=SIZE, times=VENOUS, nuisances=only("eye_motion"))
    assert c.frame_to_ref.shape == (6, 2, 3) and c.cf_to_ref is None and c.exposure is None
    np.testing.assert_allclose(c.frame_to_ref[0], np.eye(2, 3), atol=1e-9)
    ref, inside = c.frames[0].astype(np.float32), interior()

    def residual(k, m):
        back = cv2.warpAffine(c.frames[k].astype(np.float32), m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
        return np.abs(back - ref)[inside].mean()

    for k in range(1, 6):
        before, after = np.abs(c.frames[k].astype(np.float32) - ref)[inside].mean(), residual(k, c.frame_to_ref[k])
        assert after < 0.6 * before, (k, before, after)
        # the stored transform is the best one: half a pixel off either way does worse (what is left at
        # 0 is the frames' noise, interpolated)
        for dx, dy in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)):
            off = c.frame_to_ref[k] + np.array([[0, 0, dx], [0, 0, dy]])
            assert residual(k, off) > after + 0.3, (k, dx, dy)


@pytest.mark.parametrize("index", [0, 1])
def test_stored_cf_transform_registers_the_cf(index):
    aligned = make_case(index, size=SIZE).cf.astype(np.float32)
    c = make_case(index, size=SIZE, nuisances=only("misregistration"))
    cf = c.cf.astype(np.float32)
    back = cv2.warpAffine(cf, c.cf_to_ref, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    inside = interior(margin=0.25)
    before, after = np.abs(cf - aligned)[inside].mean(), np.abs(back - aligned)[inside].mean()
    # the other camera's vignetting and light differ, so not to the noise: but far closer than before
    assert after < 0.5 * before, (before, after)
    np.testing.assert_array_equal(c.frames, make_case(index, size=SIZE).frames)  # the FFA is untouched


def test_exposure_is_the_stored_gain_and_offset():
    plain = make_case(4, size=SIZE, times=LATE).frames.astype(np.float32)
    c = make_case(4, size=SIZE, times=LATE, nuisances=only("exposure"))
    assert c.exposure.shape == (6, 2) and np.ptp(c.exposure[:, 0]) > 0.02
    inside = interior() & (plain[0] > 10) & (plain[0] < 200)  # not clipped
    for k in range(6):
        gain, offset = c.exposure[k]
        undone = (c.frames[k].astype(np.float32) - offset) / gain
        # noise: each frame draws its own, so compare means, not pixels
        assert abs(undone[inside].mean() - plain[k][inside].mean()) < 1.0, k


def test_release_sampling_starts_in_the_venous_phase_of_the_eyes_own_clock():
    c = make_case(6, size=64, n_frames=8, nuisances=only("release_sampling"))
    lo, hi = phantom.FIRST_AFTER_ARRIVAL_S
    assert phantom.ARM_RETINA_S[0] <= c.arrival <= phantom.ARM_RETINA_S[1]
    assert c.arrival + lo <= c.times[0] <= c.arrival + hi and c.times[-1] >= 300
    assert c.phases[0] in ("arterial", "venous") and c.phases[-1] == "late"
    # both eyes of a patient share the arrival
    assert make_case(7, size=64, nuisances=only("release_sampling")).arrival == c.arrival


def test_patient_kinetics_changes_lesions_not_the_background():
    a = make_case(8, size=SIZE, n_frames=6)
    b = make_case(8, size=SIZE, n_frames=6, nuisances=only("patient_kinetics"))
    lesions = np.logical_or.reduce([a.lesion_kinds[k] for k in phantom.DYNAMIC_KINDS])
    background = a.fov & ~np.logical_or.reduce([phantom.cv2.dilate(m.astype(np.uint8), np.ones((9, 9))) > 0
                                                for m in a.lesion_kinds.values()])
    diff = np.abs(a.frames.astype(np.int16) - b.frames)
    assert (diff[:, background] > 0).mean() < 0.01  # the leakage's soft halo reaches a few pixels
    assert diff[:, lesions].mean() > 2.0


def test_cf_ambiguity_keeps_the_ffa_and_changes_the_cf_looks():
    a = make_case(10, size=SIZE)
    b = make_case(10, size=SIZE, nuisances=only("cf_ambiguity"))
    np.testing.assert_array_equal(a.frames, b.frames)
    assert set(b.looks) == set(phantom.LESION_KINDS)
    assert all(look == kind or look in phantom.LOOK_CONFUSIONS[kind] for kind, look in b.looks.items())
    lesions = np.logical_or.reduce(list(a.lesion_kinds.values()))
    assert np.abs(a.cf.astype(np.int16) - b.cf)[lesions].mean() > 1.0


def test_each_switch_changes_only_what_it_switches():
    """Switching one nuisance on beside the others leaves theirs as drawn (own random streams)."""
    full = make_case(12, size=64, n_frames=6, nuisances=Nuisances.preset("realistic"))
    no_motion = make_case(12, size=64, n_frames=6,
                          nuisances=Nuisances(**{n: n != "eye_motion" for n in NUISANCES}))
    np.testing.assert_array_equal(full.times, no_motion.times)
    np.testing.assert_allclose(full.cf_to_ref, no_motion.cf_to_ref)
    assert full.arrival == no_motion.arrival and no_motion.frame_to_ref is None


def test_knowledge_mask_is_far_from_the_lesions_on_the_realistic_preset():
    """The point of the preset: |first - last| > 45 no longer picks out the dynamic lesions."""
    def iou(c):
        km = (np.abs(c.frames[0].astype(np.int16) - c.frames[-1]) > 45) & c.fov
        union = (km | c.lesion).sum()
        return (km & c.lesion).sum() / union if union else np.nan

    aligned = [iou(make_case(i, size=96, n_frames=8)) for i in range(12)]
    realistic = [iou(make_case(i, size=96, n_frames=8, nuisances=Nuisances.preset("realistic")))
                 for i in range(12)]
    assert np.nanmedian(aligned) > 0.6 and np.nanmedian(realistic) < 0.3
