"""`fundus2video demo`: its parser and handler; the app itself is `fundus2video.demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fundus2video.commands.options import add_runtime_option
from fundus2video.demo import MAX_QUEUE, gradio_module, serve
from fundus2video.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `fundus2video demo` (dispatch: `cmd_demo`)."""
    p = subparsers.add_parser("demo", help="a browser page: colour fundus photo in, FFA video out (needs "
                              "fundus2video[demo])",
                              description="Serve a local web page (Gradio, offline) that generates an FFA video "
                              "from an uploaded colour fundus photo with a trained checkpoint.")
    p.add_argument("--ckpt", required=True, help="a fundus2video checkpoint (.ckpt), or what `generate --ckpt` "
                   "takes")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from other "
                   "machines; the page has no login)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast")
    add_runtime_option(p)
    p.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests that may wait for the one running")
    return p


def _check_host(host: str) -> None:
    """An address this machine can listen on, checked before anything loads (gradio's own failure
    blames the port)."""
    import socket

    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host}: not an address of this machine ({err}); e.g. 127.0.0.1 or 0.0.0.0") \
            from None


def cmd_demo(args: argparse.Namespace) -> int:
    # the cheap checks first: a wrong path or a missing extra fails at once, before torch and the checkpoint load
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 to 65535 (0: any free port)")
    if args.max_queue < 1:
        raise UserError(f"--max-queue {args.max_queue}: expected at least 1 (requests that may wait)")
    _check_host(args.host)
    if "://" not in args.ckpt and not Path(args.ckpt).exists():  # URLs and hf:// are load_module's to fetch
        raise UserError(f"checkpoint not found: {args.ckpt} (make train writes "
                        "runs/fundus2video_cpu/latest/checkpoints/last.ckpt)")
    gradio_module()
    if args.port == 0:  # any free port: chosen here, since gradio's own search starts from 7860
        import socket

        with socket.socket() as probe:
            probe.bind((args.host, 0))
            args.port = probe.getsockname()[1]
    if args.device is not None:
        from fundus2video.devices import check_device

        check_device(args.device, "--device")
    from fundus2video.onnx_runtime import limit_torch_threads

    limit_torch_threads()
    serve(args.ckpt, args.host, args.port, args.device, args.bf16, args.max_queue, runtime=args.runtime)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m fundus2video.commands.demo ...`: the same as `fundus2video demo ...`."""
    parser = argparse.ArgumentParser(prog="fundus2video")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_demo(args)
    except UserError as err:
        print(f"fundus2video: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
