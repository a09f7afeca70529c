"""`fundus2video export`: its parser (torch-free, so `fundus2video --help` stays fast) and its handler;
the export itself is `fundus2video.export`."""

from __future__ import annotations

import argparse

from fundus2video.export import FORMATS, export_generator


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `fundus2video export` (dispatch: `cmd_export`)."""
    p = subparsers.add_parser("export", help="the generator as a standalone TorchScript or ONNX file",
                              description="Export a checkpoint's generator for use without fundus2video; "
                                          "writes OUT and OUT.json (inputs, outputs, how to call it); "
                                          "--format hub writes the folder OUT for the Hugging Face Hub.")
    p.add_argument("--ckpt", required=True, help="a fundus2video checkpoint (.ckpt; hub: also a Hub folder, "
                                                 "an http(s) URL or hf://REPO_ID[@REV])")
    p.add_argument("--out", required=True, help="file to write, e.g. generator.pt or generator.onnx (hub: a folder)")
    p.add_argument("--format", choices=FORMATS, default="torchscript",
                   help="torchscript (needs torch only), onnx (needs fundus2video[export]) or hub (a Hugging "
                        "Face Hub folder: model.safetensors, config.json, README.md model card)")
    p.add_argument("--frames", type=int, default=None,
                   help="export the whole rollout of T frames: CF -> video (default: one window)")
    p.add_argument("--size", type=int, default=None, help="image side H = W (default: the checkpoint's data.size)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (hub: the files of a non-empty "
                   "folder)")
    p.add_argument("--push", metavar="REPO_ID", default=None,
                   help="hub: also upload the folder to this Hugging Face model repository (needs fundus2video[hub])")
    p.add_argument("--private", action="store_true", help="hub: create the --push repository as private")
    p.add_argument("--license", default="mit", help="hub: the model card's license identifier (default: mit)")
    return p


def cmd_export(args: argparse.Namespace) -> int:
    result = export_generator(args.ckpt, args.out, args.format, args.size, args.frames, args.overwrite, args.push,
                              args.private, args.license)
    if args.format == "hub":
        print(f"wrote {result.path}/ (model.safetensors, config.json, README.md)"
              + (f" and pushed it to https://huggingface.co/{args.push}" if args.push else ""))
        return 0
    print(f"wrote {result.path} ({args.format}; max |exported - eager| = {result.max_abs_diff:.2g}) "
          f"and {result.sidecar}")
    return 0
