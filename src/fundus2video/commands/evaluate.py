"""`fundus2video evaluate`: parse, score (`fundus2video.evaluation.evaluate`), print the summary."""

from __future__ import annotations

import argparse

from fundus2video.evaluation import evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from fundus2video.devices import check_device

    args.device = str(check_device(args.device, "--device"))
    out = evaluate(args.ckpt, args.data, args.split, args.protocol, args.out, args.i3d, args.lpips, args.lpips_net,
                   args.device, args.bf16)
    report = json.loads((out / "metrics.json").read_text())
    width = max(len(k) for k in report["metrics"]) if report["metrics"] else 0
    print(f"{report['n_cases']} cases ({report['split']}), protocol {report['settings']['protocol']}:")
    for name, value in report["metrics"].items():
        print(f"  {name:<{width}}  {value}")
    for name, reason in report["skipped"].items():
        print(f"  {name:<{width}}  SKIPPED: {reason}")
    print(f"written: {out}/metrics.json, per_case.csv, contact_sheet.png"
          + "".join(f", {name}" for name in ("per_phase.csv", "kinetics.png", "kinetics_cases.json",
                                              "kinetics_cases.png") if (out / name).is_file()))
    return 0
