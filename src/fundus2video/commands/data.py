"""`fundus2video data check|phantom|import-dicom|register`: data on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fundus2video.config import load_config, resolve_experiment, to_plain


def cmd_data_check(args: argparse.Namespace) -> int:
    from fundus2video.data_modules.check import check_records, format_table
    from fundus2video.data_modules.datamodule import list_records

    path = Path(args.path)
    source = "manifest" if path.suffix.lower() == ".csv" else "folders"
    cfg = load_config(resolve_experiment(args.experiment),
                      [f"data.source={source}", f"data.root={path}", *args.overrides])
    d = cfg.data
    records = list_records(to_plain(d))
    reports = check_records(records, d.size, cfg.model.window + 1, d.manifest.per_phase, d.n_frames,
                            d.km_threshold, progress=sys.stderr.isatty(),
                            registration=getattr(args, "registration", False))
    print(format_table(reports, d.n_frames))
    return 1 if any(not r.ok for r in reports) else 0


def cmd_data_phantom(args: argparse.Namespace) -> int:
    from fundus2video.data_modules.phantom_files import write_phantom

    out = write_phantom(args.out, args.cases, size=args.size, n_frames=args.frames, video=args.video,
                        seed=args.seed, overwrite=args.overwrite, preset=args.preset)
    print(f"wrote {args.cases} phantom cases ({args.preset}, {args.video}, {args.size} px, {args.frames} frames) "
          f"to {out}")
    return 0


def cmd_data_import_dicom(args: argparse.Namespace) -> int:
    from fundus2video.dicom import import_dicom

    report = import_dicom(args.src, args.out, anonymize=args.anonymize, key=args.key, mapping=args.mapping,
                          dry_run=args.dry_run, overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(report.format())
    if report.exit_code == 2:  # the report above says what was read and skipped; stderr says why nothing came
        print(f"fundus2video: error: import-dicom: no eye found under {args.src} (no Ophthalmic Photography image "
              "with PatientID and laterality; the report above lists each file)", file=sys.stderr)
    return report.exit_code


def cmd_data_register(args: argparse.Namespace) -> int:
    from fundus2video.registration.folders import register_folder

    report = register_folder(args.src, args.out, model=args.model, overwrite=args.overwrite,
                             progress=sys.stderr.isatty())
    print("\n".join(report.lines()))
    return report.exit_code
