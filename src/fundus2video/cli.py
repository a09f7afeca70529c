"""Command line: `fundus2video train|config ...` (also `python -m fundus2video`).

Experiments are YAML files (`experiments/NAME.yaml`) or their names; overrides follow as
`key=value` or `--key=value`. User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from fundus2video import demo as demo_cli
from fundus2video import export as export_cli
from fundus2video import sweep as sweep_cli
from fundus2video.config import load_config, to_plain
from fundus2video.errors import ConfigError, UserError


def resolve_experiment(name: str) -> Path:
    """A YAML path, or a name looked up as experiments/NAME.yaml."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        candidates = [path]
    else:
        candidates = [Path("experiments") / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    folder = candidates[0].parent
    known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    hint = f" (available in {folder}/: {', '.join(known)})" if known else ""
    raise ConfigError(f"experiment not found: {candidates[0]}{hint}")


def _config_from(args: argparse.Namespace):
    return load_config(resolve_experiment(args.experiment), args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(_config_from(args), resolve=True), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    if args.dry_run:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    from fundus2video.train import Interrupted, resolve_resume, train

    resume = resolve_resume(cfg, args.resume) if args.resume else None
    try:
        run_dir = train(cfg, resume, init_from=args.init_from)
    except Interrupted as stop:
        print(f"\n{stop}\nresume with: fundus2video train {args.experiment} --resume {stop.checkpoint}")
        return 130 if stop.signal == "SIGINT" else 143  # 128 + the signal: the status a killed job would have
    print(f"\nrun directory: {run_dir}\n"
          f"  config.yaml, checkpoints/last.ckpt, metrics.csv, knowledge_masks.png,\n"
          f"  samples/last.mp4 and samples/last.gif (CF | real FFA | generated FFA)")
    return 0


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
                            d.km_threshold, progress=sys.stderr.isatty())
    print(format_table(reports))
    return 1 if any(not r.ok for r in reports) else 0


def cmd_data_phantom(args: argparse.Namespace) -> int:
    from fundus2video.data_modules.phantom_files import write_phantom

    out = write_phantom(args.out, args.cases, size=args.size, n_frames=args.frames, video=args.video,
                        seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.cases} phantom cases ({args.video}, {args.size} px, {args.frames} frames) to {out}")
    return 0


def cmd_data_import_dicom(args: argparse.Namespace) -> int:
    from fundus2video.data_modules.dicom import import_dicom

    report = import_dicom(args.src, args.out, anonymize=args.anonymize, key=args.key, mapping=args.mapping,
                          dry_run=args.dry_run, overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(report.format())
    return report.exit_code


def cmd_import_weights(args: argparse.Namespace) -> int:
    from fundus2video.weights import import_weights

    cfg = load_config(resolve_experiment(args.config), args.overrides)
    out = import_weights(cfg, args.netG, args.out, args.netD)
    print(f"wrote {out} (generator from {args.netG}" + (f", discriminator from {args.netD})" if args.netD else ")"))
    return 0


STUDY_OPTIONS = ("--variants", "--seeds", "--jobs", "--out", "--results", "--readme")


def cmd_study(args: argparse.Namespace) -> int:
    from fundus2video.study import main_study

    rest = list(args.overrides)
    if args.spec and "=" in args.spec:  # no spec named: the first word is already an override
        rest, args.spec = [args.spec, *rest], None
    for option in STUDY_OPTIONS:  # options may also come after the overrides
        value, rest = _take_option(rest, option)
        if value is not None:
            setattr(args, option[2:].replace("-", "_"), value)
    flags, rest = _split_flags(rest, {"--report-only", "--dry-run", "--"})
    args.report_only = args.report_only or "--report-only" in flags
    args.dry_run = args.dry_run or "--dry-run" in flags
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ConfigError(f"study: '{bad[0]}' is neither an option nor a key=value override "
                          f"(options: {', '.join(STUDY_OPTIONS)}, --report-only, --dry-run)")
    variants = [v for v in str(args.variants).split(",") if v] if args.variants else None
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s] if args.seeds else None
        jobs = int(args.jobs)
    except ValueError:
        raise ConfigError(f"--seeds / --jobs: expected integers (e.g. --seeds 0,1,2 --jobs 2), found "
                          f"{args.seeds!r} / {args.jobs!r}") from None
    return main_study(args.spec or "phantom", variants, seeds, rest, args.out, args.results, jobs, args.dry_run,
                      args.report_only, args.readme)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from fundus2video.generate import generate_videos, load_module, output_targets, photos_in

    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames must be at least 1, got {args.frames}")
    if args.fps < 1:
        raise UserError(f"--fps must be at least 1 frame per second, got {args.fps}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this machine has no CUDA GPU (torch {torch.__version__}); use "
                        "--device cpu")
    photos = photos_in(args.cf)
    formats = ("mp4", "gif") if args.gif else ("mp4",)
    targets = output_targets(photos, Path(args.out), formats, args.strip, args.side_by_side)
    module = load_module(args.ckpt, args.device)
    results = generate_videos(module, photos, targets, args.frames, formats, args.fps, args.strip, args.side_by_side,
                              batch=args.batch, bf16=args.bf16, colour_check=not args.no_fundus_check)
    for result in tqdm(results, desc="generating", unit="photo", total=len(photos), disable=len(photos) == 1):
        print(" ".join(str(p) for p in result.paths))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from fundus2video.evaluate import evaluate

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
          + "".join(f", {name}" for name in ("per_phase.csv", "kinetics.png") if (out / name).is_file()))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from fundus2video.pretrained import WEIGHTS, cache_dir, fetch, list_weights

    if args.weights_command == "list":
        rows = [("NAME", "FILE", "CHECKED BY", "CACHED"),
                *((name, file, f"sha256 {WEIGHTS[name].expected}" + ("" if WEIGHTS[name].sha256 else "...")
                   if WEIGHTS[name].expected else "none (place by hand)", cached)
                  for name, file, cached in list_weights())]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3])
        print(f"cache: {cache_dir()} ($TORCH_HOME/hub/checkpoints); a file put there by hand under its FILE name "
              "is used when it matches; sources:")
        for w in WEIGHTS.values():
            print(f"  {w.name:<{widths[0]}}  {w.url}")
        return 0
    names = list(WEIGHTS) if args.name == "all" else [args.name]
    if len(names) > 1 and (args.url or args.sha256):
        raise UserError("weights fetch all: --url and --sha256 apply to one NAME")
    failed = []
    for name in names:
        try:
            print(f"{name}: {fetch(name, args.url, args.sha256)}")
        except UserError as err:
            if len(names) == 1:
                raise
            print(f"{name}: not fetched: {err}")
            failed.append(name)
    if failed:
        raise UserError(f"weights fetch all: {len(failed)} of {len(names)} not fetched ({', '.join(failed)}; "
                        "reasons above)")
    return 0


def _take_option(rest: list[str], option: str) -> tuple[str | None, list[str]]:
    """Take `option VALUE` or `option=VALUE` out of the overrides."""
    for i, arg in enumerate(rest):
        if arg == option:
            if i + 1 == len(rest):
                raise ConfigError(f"{option} needs a value")
            return rest[i + 1], rest[:i] + rest[i + 2:]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1], rest[:i] + rest[i + 1:]
    return None, rest


def _split_flags(rest: list[str], flags: set[str]) -> tuple[set[str], list[str]]:
    """Separate our own `--flag`s from overrides (which may also start with `--`)."""
    found = {a for a in rest if a in flags}
    return found, [a for a in rest if a not in flags]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fundus2video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train an experiment"),
                            ("config", "print an experiment's resolved configuration")):
        p = sub.add_parser(name, help=help_text,
                           description=f"{help_text}. Overrides: key=value or --key=value.")
        p.add_argument("experiment", help="experiments/NAME.yaml or NAME")
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ...")
        if name == "train":
            p.epilog = ("--dry-run: print the resolved configuration and stop. --resume last|PATH: continue "
                        "exactly from a checkpoint (last: <logging.root>/<name>/latest/checkpoints/last.ckpt)")
    data = sub.add_parser("data", help="check data on disk, or write the phantom to disk")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="read every case as training would; list bad cases",
                                description="Exit status 1 when any case is bad.")
    check.add_argument("path", help="a folder of case folders, or a manifest CSV")
    check.add_argument("--experiment", default="smoke",
                       help="experiment whose data settings apply (size, window, manifest columns)")
    check.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ...")
    ph = data_sub.add_parser("phantom", help="write the synthetic phantom as case folders")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--cases", type=int, default=56, help="number of cases (two eyes per patient)")
    ph.add_argument("--size", type=int, default=256, help="image size in pixels")
    ph.add_argument("--frames", type=int, default=12, help="FFA frames per case")
    ph.add_argument("--video", choices=("mp4", "png"), default="mp4", help="ffa.mp4 or ffa/NNN.png")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--overwrite", action="store_true", help="replace a phantom already written to --out")
    dcm = data_sub.add_parser("import-dicom", help="turn clinical DICOM (CF photos, angiograms) into case folders",
                              description="Read Ophthalmic Photography DICOM under SRC (headers first), pair each "
                              "eye's colour photo with its angiogram frames in acquisition order and write "
                              "<out>/<case>/cf.png, ffa/NNN.png and cases.csv. Exit status 1 when any eye was "
                              "left out, 2 for usage errors.")
    dcm.add_argument("src", help="a folder of DICOM files (walked; a DICOMDIR is only a hint)")
    dcm.add_argument("--out", required=True, help="output folder (a new or empty one, or see --overwrite)")
    dcm.add_argument("--anonymize", action="store_true",
                     help="replace patient ids by pseudonyms P + HMAC-SHA256(KEY, PatientID)[:12]")
    dcm.add_argument("--key", help="the secret for --anonymize (the same key gives the same pseudonyms)")
    dcm.add_argument("--mapping", help="with --anonymize: also write pseudonym,patient_id to this CSV "
                     "(outside --out)")
    dcm.add_argument("--dry-run", action="store_true", help="print the report; write nothing")
    dcm.add_argument("--overwrite", action="store_true", help="replace an --out that already holds cases")
    imp = sub.add_parser("import-weights", help="turn release / pix2pixHD weights into a fundus2video checkpoint")
    imp.add_argument("--netG", required=True, help="the release's <epoch>_net_G.pth")
    imp.add_argument("--netD", help="the release's <epoch>_net_D.pth (optional)")
    imp.add_argument("--config", required=True, help="experiment matching the weights (e.g. pix2pixhd)")
    imp.add_argument("--out", required=True, help="checkpoint to write (.ckpt)")
    imp.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ...")
    gen = sub.add_parser("generate", help="an FFA video from a colour fundus photo (or a folder of them)")
    gen.add_argument("--ckpt", required=True,
                     help="a fundus2video checkpoint (.ckpt), a Hub folder, a URL of either, or hf://REPO_ID[@REV]")
    gen.add_argument("--cf", required=True, help="a CF photo, or a folder of photos")
    gen.add_argument("--out", required=True, help="video.mp4 (one photo) or a folder (several)")
    gen.add_argument("--frames", type=int, default=None, help="frames to generate (default: the training T)")
    gen.add_argument("--fps", type=int, default=4)
    gen.add_argument("--gif", action="store_true", help="also write a gif")
    gen.add_argument("--strip", action="store_true", help="also write a PNG strip: CF and every frame")
    gen.add_argument("--side-by-side", action="store_true", help="also write CF | generated as <stem>_sbs.mp4")
    gen.add_argument("--device", default="cpu", help="cpu or cuda")
    gen.add_argument("--no-fundus-check", action="store_true",
                     help="accept photos that are not orange-red (pseudo-colour cameras such as Optos)")
    gen.add_argument("--batch", type=int, default=1,
                     help="photos per rollout when --cf is a folder (more memory; faster where one photo "
                     "leaves the cores or GPU idle)")
    gen.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast (slow on CPUs "
                     "without bf16 instructions)")
    st = sub.add_parser("study", aliases=["ablation"],
                        help="variants x seeds on the phantom: resumable units, table with bootstrap intervals",
                        description="Train and score every (variant, seed) unit of a study spec "
                        "(experiments/studies/NAME.yaml) that is not finished; rebuild the report. Overrides "
                        "(key=value, also after --) apply over the spec's budget.")
    st.add_argument("spec", nargs="?", help="experiments/studies/NAME.yaml or NAME (default: phantom)")
    st.add_argument("--variants", help="comma-separated experiments (default: the spec's)")
    st.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    st.add_argument("--jobs", default="1", help="units run at once, each with cores / jobs threads")
    st.add_argument("--out", default="runs/study", help="where the units' runs and checkpoints go")
    st.add_argument("--results", help="where the unit result files and the report go (default: "
                    "results/<spec>_study)")
    st.add_argument("--report-only", action="store_true", help="rebuild the report from the result files only")
    st.add_argument("--readme", help="also replace this README's study block with the report")
    st.add_argument("--dry-run", action="store_true", help="list the units and their state; train nothing")
    st.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value added to the budget")
    ev = sub.add_parser("evaluate", help="score a checkpoint on a split (metrics.json, per_case.csv, picture)")
    ev.add_argument("--ckpt", required=True, help="a fundus2video checkpoint (.ckpt)")
    ev.add_argument("--data", help="phantom, a folder of case folders or a manifest CSV (default: the "
                    "checkpoint's own data, with its run's split.csv)")
    ev.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ev.add_argument("--protocol", default="both", choices=("standard", "paper", "both"),
                    help="standard: [0, 1], set-level FVD; paper: the release's formulas (comparable with "
                    "the published numbers)")
    ev.add_argument("--out", help="output folder (default: <run dir>/eval/<split>-<data>)")
    ev.add_argument("--i3d", default="auto", help="I3D weights for FVD: i3d_torchscript.pt or i3d_pretrained_400.pt, "
                    "i3d, i3d_400 or auto (default: whichever is cached; FVD is skipped when none is)")
    ev.add_argument("--lpips", default="auto", help="LPIPS backbone: torchvision's vgg16-397923af.pth (or alexnet, "
                    "--lpips-net), vgg16, alexnet or auto (default: the cached file of --lpips-net, else fetched)")
    ev.add_argument("--lpips-net", default="vgg", choices=("vgg", "alex"))
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    ev.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast")
    wt = sub.add_parser("weights", help="list or fetch the pretrained weights (VGG19, LPIPS backbones, I3D)",
                        description="Known weights are cached in $TORCH_HOME/hub/checkpoints and verified by "
                        "SHA-256; settings that take weights accept a path, a NAME or auto.")
    wt_sub = wt.add_subparsers(dest="weights_command", required=True)
    wt_sub.add_parser("list", help="the known weights and where they are cached")
    wf = wt_sub.add_parser("fetch", help="download and verify weights into the cache")
    wf.add_argument("name", help="a NAME of `weights list`, or all")
    wf.add_argument("--url", help="download from this URL instead (a mirror); the SHA-256 is still checked")
    wf.add_argument("--sha256", help="the file's SHA-256, for weights whose hash is not known (the I3Ds)")
    sweep_cli.add_parser(sub)
    export_cli.add_parser(sub)
    demo_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    command = args.command if args.command != "data" else f"data {args.data_command}"
    commands = {"train": cmd_train, "config": cmd_config, "data check": cmd_data_check,
                "data phantom": cmd_data_phantom, "data import-dicom": cmd_data_import_dicom,
                "import-weights": cmd_import_weights,
                "study": cmd_study, "ablation": cmd_study, "generate": cmd_generate, "sweep": sweep_cli.cmd_sweep,
                "evaluate": cmd_evaluate, "export": export_cli.cmd_export, "demo": demo_cli.cmd_demo,
                "weights": cmd_weights}
    try:
        if hasattr(args, "overrides"):
            flags, args.overrides = _split_flags(args.overrides, {"--dry-run"})
            args.dry_run = getattr(args, "dry_run", False) or "--dry-run" in flags
            args.resume, args.overrides = _take_option(args.overrides, "--resume")
            args.init_from, args.overrides = _take_option(args.overrides, "--init-from")
        return commands[command](args)
    except UserError as err:  # configuration and data problems: the message says it all
        print(f"fundus2video: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        # writes are atomic: what was there before is intact, nothing half-written is left
        what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}[err.errno]
        print(f"fundus2video: error: {what}: {err.filename or '?'}", file=sys.stderr)
        return 2
