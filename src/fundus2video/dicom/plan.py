"""Planning the cases (pure): the colour photo of each eye, its frames in time order, and the case
folder names."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

from fundus2video.dicom.headers import printable, pseudonym, safe_name
from fundus2video.dicom.objects import TIME_SOURCES, DicomObject, Eye, PlannedFrame


def choose_cf(cfs: list[DicomObject]) -> tuple[DicomObject, str]:
    """The colour photo of an eye when there are several: the latest acquisition time, then the
    highest InstanceNumber, then the last file name. Returns it and why it won."""
    source = next((s for s in TIME_SOURCES if all(s in c.times for c in cfs)), None)

    def key(c: DicomObject):
        return (c.times[source] if source else datetime.min, c.instance if c.instance is not None else -1, c.rel)

    ranked = sorted(cfs, key=key, reverse=True)
    best, second = ranked[0], ranked[1]
    if source and best.times[source] != second.times[source]:
        why = f"later {source}"
    elif best.instance is not None and best.instance != second.instance:
        why = "higher InstanceNumber" + ("" if source else " (no acquisition time on all of them)")
    else:
        why = "last file name (same acquisition time and InstanceNumber)"
    return best, why


def order_frames(objects: list[DicomObject]) -> tuple[list[PlannedFrame], str, list[tuple[DicomObject, str]]]:
    """Every angiogram frame of one eye in acquisition order, with seconds since the first.

    The object time comes from the best source of TIME_SOURCES that all objects have; when no
    source covers them all, the one covering most (more than half) is used and objects without
    it are left aside; failing that, InstanceNumber orders the objects and times stay unknown.
    Frames inside a multi-frame object follow FrameTimeVector or FrameTime.
    Returns (frames, the time source in words, [(object left aside, reason)]).
    """
    left: list[tuple[DicomObject, str]] = []
    source = next((s for s in TIME_SOURCES if all(s in o.times for o in objects)), None)
    if source is None and len(objects) > 1:
        counts = {s: sum(s in o.times for o in objects) for s in TIME_SOURCES}
        best = max(TIME_SOURCES, key=lambda s: (counts[s], -TIME_SOURCES.index(s)))
        if counts[best] * 2 > len(objects):
            source = best
            left = [(o, f"frame with no time: no {best}, which the other frames of this eye have")
                    for o in objects if best not in o.times]
            objects = [o for o in objects if best in o.times]
    if len(objects) == 1:
        o = objects[0]
        if o.n_frames == 1:
            return [PlannedFrame(o, 0, 0.0)], source or "single frame", left
        if o.frame_offsets is not None:
            return [PlannedFrame(o, i, t) for i, t in enumerate(o.frame_offsets)], o.frame_source, left
        return [PlannedFrame(o, i, None) for i in range(o.n_frames)], "stored frame order (no FrameTime)", left

    def instance(o: DicomObject) -> tuple:
        return (o.instance is None, o.instance or 0, o.rel)

    multi = sorted({o.frame_source for o in objects if o.n_frames > 1})
    untimed = [o for o in objects if o.n_frames > 1 and o.frame_offsets is None]
    if source is not None and not untimed:
        start = min(o.times[source] for o in objects)
        frames = [PlannedFrame(o, i, (o.times[source] - start).total_seconds() + (o.frame_offsets or [0.0])[i])
                  for o in objects for i in range(o.n_frames)]
        frames.sort(key=lambda f: (f.time, instance(f.obj), f.index))
        t0 = frames[0].time
        frames = [PlannedFrame(f.obj, f.index, round(f.time - t0, 6)) for f in frames]
        return frames, " + ".join([source, *multi]), left
    if source is not None:  # objects in time order, but one multi-frame object has no frame times
        ordered = sorted(objects, key=lambda o: (o.times[source], instance(o)))
        words = f"{source}, object order only ({untimed[0].rel} has no FrameTime; times unknown)"
    else:
        ordered = sorted(objects, key=instance)
        words = "InstanceNumber (times unknown)" if all(o.instance is not None for o in objects) else \
            "InstanceNumber, then file name (times unknown)"
    return [PlannedFrame(o, i, None) for o in ordered for i in range(o.n_frames)], words, left


def plan(objects: list[DicomObject], key: str | None = None,
         min_frames: int = 2) -> tuple[list[Eye], list[tuple[str, str]]]:
    """Group header facts into eyes, pick each eye's colour photo, order its frames and name
    the cases. Returns the eyes (in patient, study, eye order) and the files left aside."""
    skipped: list[tuple[str, str]] = []
    seen: dict[str, DicomObject] = {}
    unique = []
    for o in sorted(objects, key=lambda o: o.rel):
        if o.sop_uid and o.sop_uid in seen:
            skipped.append((o.rel, f"duplicate of {seen[o.sop_uid].rel} (same SOPInstanceUID)"))
            continue
        seen.setdefault(o.sop_uid, o)
        unique.append(o)
    studies: dict[str, dict[str, tuple]] = defaultdict(dict)
    groups: dict[tuple[str, str, str], Eye] = {}
    for o in unique:
        order = studies[o.patient_id].get(o.study_uid)
        studies[o.patient_id][o.study_uid] = min(order, o.study_order) if order else o.study_order
    study_no = {(p, uid): i + 1 for p, found in studies.items()
                for i, (uid, _) in enumerate(sorted(found.items(), key=lambda kv: kv[1]))}
    for o in unique:
        eye = groups.setdefault((o.patient_id, o.study_uid, o.eye),
                                Eye(o.patient_id, o.study_uid, study_no[(o.patient_id, o.study_uid)], o.eye))
        (eye.cfs if o.kind == "cf" else eye.objects).append(o)
    eyes = sorted(groups.values(), key=lambda e: (e.patient_id, e.study_no, e.eye))
    cf_elsewhere = {(e.patient_id, e.eye) for e in eyes if e.cfs}
    for eye in eyes:
        eye.label = pseudonym(eye.patient_id, key) if key is not None else printable(eye.patient_id)
        if eye.cfs:
            eye.cf, why = (eye.cfs[0], "") if len(eye.cfs) == 1 else choose_cf(eye.cfs)
            for other in eye.cfs:
                if other is not eye.cf:
                    skipped.append((other.rel, f"another colour photo of {eye.label} {eye.eye} "
                                               f"(study {eye.study_no}): took {eye.cf.rel} ({why})"))
        if eye.objects:
            sizes = Counter((o.columns, o.rows) for o in eye.objects)
            size = max(sizes, key=lambda s: (sizes[s], s))
            for o in eye.objects:
                if (o.columns, o.rows) != size:
                    skipped.append((o.rel, f"frame size {o.columns}x{o.rows} differs from the rest of the "
                                           f"angiogram of {eye.label} {eye.eye} ({size[0]}x{size[1]})"))
            kept = [o for o in eye.objects if (o.columns, o.rows) == size]
            eye.frames, eye.time_source, left = order_frames(kept)
            skipped += [(o.rel, reason) for o, reason in left]
        if not eye.cfs:
            hint = (" (one is in another study of this patient; CF and angiogram are paired within a study)"
                    if (eye.patient_id, eye.eye) in cf_elsewhere else "")
            eye.problem = f"angiogram with no colour photo of the same eye{hint}"
        elif not eye.objects:
            eye.problem = "colour photo with no angiogram"
        elif len(eye.frames) < min_frames:
            eye.problem = f"only {len(eye.frames)} angiogram frame(s), need at least {min_frames}"
    _name_cases(eyes)
    return eyes, skipped


def _name_cases(eyes: list[Eye]) -> None:
    """`<patient>_<eye>`, with `_<study number>` when the patient's eye is in several studies;
    names made unique after cleaning (two ids may clean to the same folder name)."""
    per_eye = Counter((e.patient_id, e.eye) for e in eyes)
    taken: set[str] = set()
    for e in eyes:
        base = f"{safe_name(e.label)}_{e.eye}" + (f"_{e.study_no}" if per_eye[(e.patient_id, e.eye)] > 1 else "")
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name.lower())
        e.case_id = name
