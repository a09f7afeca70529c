"""Command line: `fundus2video SUBCOMMAND ...` (also `python -m fundus2video`).

Every subcommand is registered here, in `COMMANDS`: its parser is built below (or by its own
module's `add_parser`) and its handler, `commands/<module>.py:<function>`, is imported only when
it runs, so `fundus2video --help` stays free of torch. Experiments are YAML files
(`experiments/NAME.yaml`) or their names; overrides follow as `key=value` or `--key=value`.
User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import signal
import sys
import threading

from fundus2video.commands import demo as demo_cli
from fundus2video.commands import export as export_cli
from fundus2video.commands import sweep as sweep_cli
from fundus2video.commands.options import Parser, add_runtime_option, split_flags, take_option
from fundus2video.errors import UserError

# subcommand -> its handler in fundus2video.commands
COMMANDS = {
    "train": "train:cmd_train",
    "config": "train:cmd_config",
    "data check": "data:cmd_data_check",
    "data phantom": "data:cmd_data_phantom",
    "data import-dicom": "data:cmd_data_import_dicom",
    "data register": "data:cmd_data_register",
    "generate": "generate:cmd_generate",
    "evaluate": "evaluate:cmd_evaluate",
    "export": "export:cmd_export",
    "import-weights": "import_weights:cmd_import_weights",
    "study": "study:cmd_study",
    "ablation": "study:cmd_study",
    "sweep": "sweep:cmd_sweep",
    "weights": "weights:cmd_weights",
    "demo": "demo:cmd_demo",
}


def handler(command: str):
    module, function = COMMANDS[command].split(":")
    return getattr(importlib.import_module(f"fundus2video.commands.{module}"), function)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fundus2video", description=__doc__.splitlines()[0])
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
    check.add_argument("--registration", action="store_true",
                       help="also estimate how far each case's frames have moved against its first (slower: "
                       "1-2 s a case)")
    check.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value ...")
    reg = data_sub.add_parser("register", help="align every FFA frame and the CF onto each series' first frame",
                              description="Register each case folder of SRC (frames onto frame 0, then the CF) "
                              "and write registered case folders, registration.json per case, registration.csv "
                              "and contact sheets to --out. SRC is only read. Exit status 1 when any case was "
                              "skipped or frame dropped, 2 for usage errors. docs/REGISTRATION.md.")
    reg.add_argument("src", help="a folder of case folders")
    reg.add_argument("--out", required=True, help="output folder (a new or empty one, or see --overwrite)")
    reg.add_argument("--model", choices=("rigid", "similarity", "affine"), default="similarity",
                     help="motion model (default: similarity: shift, rotation and scale)")
    reg.add_argument("--overwrite", action="store_true", help="replace a registration already written to --out")
    ph = data_sub.add_parser("phantom", help="write the synthetic phantom as case folders")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--cases", type=int, default=56, help="number of cases (two eyes per patient)")
    ph.add_argument("--size", type=int, default=256, help="image size in pixels")
    ph.add_argument("--frames", type=int, default=12, help="FFA frames per case")
    ph.add_argument("--video", choices=("mp4", "png"), default="mp4", help="ffa.mp4 or ffa/NNN.png")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--preset", default="aligned",
                    help="aligned (frames and CF in register) or realistic (clinical nuisances, with truth.json)")
    ph.add_argument("--overwrite", action="store_true", help="replace a phantom already written to --out")
    dcm = data_sub.add_parser("import-dicom", help="turn clinical DICOM (CF photos, angiograms) into case folders",
                              description="Read Ophthalmic Photography DICOM under SRC (headers first), pair each "
                              "eye's colour photo with its angiogram frames in acquisition order and write "
                              "<out>/<case>/cf.png, ffa/NNN.png and cases.csv. Exit status 1 when any eye was "
                              "left out, 2 for usage errors and when no eye was found at all.")
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
    gen.add_argument("--overwrite", action="store_true", help="replace outputs that exist (without it they stop "
                     "the command before anything is generated)")
    gen.add_argument("--device", default="cpu", help="cpu or cuda")
    gen.add_argument("--no-fundus-check", action="store_true",
                     help="accept photos that are not orange-red (pseudo-colour cameras such as Optos)")
    gen.add_argument("--batch", type=int, default=1,
                     help="photos per rollout when --cf is a folder (more memory; faster where one photo "
                     "leaves the cores or GPU idle)")
    gen.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast (slow on CPUs "
                     "without bf16 instructions)")
    add_runtime_option(gen)
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
    ev.add_argument("--out", help="output folder (default: <run dir>/eval/<split>-<data>; for a checkpoint outside "
                    "a run folder, <name>-eval/<split>-<data> beside it)")
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


# commands that handle SIGTERM themselves: training saves at a video's end (Lightning's handler and
# ours), a study passes it to its units, the demo's server stops on its own
OWN_SIGTERM = ("train", "study", "ablation", "sweep", "demo")


@contextlib.contextmanager
def _sigterm_unwinds(command: str):
    """SIGTERM (a scheduler, `timeout`, `kill`) ends the other commands as an exception, not at once:
    every `finally` runs, so temporary files and staging folders (a DICOM import's patient images
    among them) are removed, and nothing half-written stays. Exit status 143."""
    if command in OWN_SIGTERM or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up runs once, undisturbed
        print(f"fundus2video: stopped by SIGTERM; {command} removed what it had not finished", file=sys.stderr)
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    command = args.command if args.command != "data" else f"data {args.data_command}"
    try:
        # options that argparse's REMAINDER leaves among the overrides: taken out for the command that has
        # them; for the others they stay, and the override check names them
        if command == "train":
            flags, args.overrides = split_flags(args.overrides, {"--dry-run"})
            args.dry_run = "--dry-run" in flags
            args.resume, args.overrides = take_option(args.overrides, "--resume")
            args.init_from, args.overrides = take_option(args.overrides, "--init-from")
        if command == "data check":
            experiment, args.overrides = take_option(args.overrides, "--experiment")
            args.experiment = experiment or args.experiment
            flags, args.overrides = split_flags(args.overrides, {"--registration"})
            args.registration = args.registration or "--registration" in flags
        with _sigterm_unwinds(command):
            return handler(command)(args)
    except UserError as err:  # configuration and data problems: the message says it all
        print(f"fundus2video: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # a path the system refuses (full, read-only, missing, a file where a folder must be, ...): the
        # user's to fix; writes are atomic, so what was there before is intact and nothing half-written left
        known = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}
        if err.errno not in known and not err.filename:
            raise
        what = known.get(err.errno) or (err.strerror or type(err).__name__).lower()
        if err.errno in (errno.EEXIST, errno.ENOTDIR) and err.filename:  # a folder asked for where a file is
            from fundus2video.io import file_in_the_way

            blocking = file_in_the_way(err.filename)
            if blocking is not None:
                print(f"fundus2video: error: {blocking} is a file, not a folder (needed for {err.filename})",
                      file=sys.stderr)
                return 2
        # a full disk met inside a library (a video encoder, torch.save) may name no file: say what was written
        out = getattr(args, "out", None)
        where = err.filename or (f"while writing --out {out}" if out else f"while running `fundus2video {command}`")
        print(f"fundus2video: error: {what}: {where}", file=sys.stderr)
        return 2
    except Exception as err:
        # Lightning's own checks of the trainer settings, for any combination the configuration check
        # does not foresee: they are about what the user asked for, so one line too
        lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
        if lightning is None or not isinstance(err, lightning.MisconfigurationException):
            raise
        print(f"fundus2video: error: {(str(err).strip().splitlines() or [type(err).__name__])[0]} (Lightning's "
              "check of the trainer settings)", file=sys.stderr)
        return 2
