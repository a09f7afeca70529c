"""The README and the usage pages say what runs: every command in their ```bash blocks is checked, and
every relative link in README.md and docs/*.md reaches a file and, with #anchor, a heading of it.

A command that is cheap runs for real, in this process (`run_cli`): `--help`, `config`, `weights list`,
`train ... --dry-run` (a `train` is always run with `--dry-run` added), `study ... --dry-run`. One that
would train, download, serve or write is checked in a dry form instead: its make target exists and
`make -n` prints its recipe (whose `fundus2video` line is then checked like any other), every make
variable it sets is one the Makefile reads, the CLI's parser accepts its flags, and the experiment,
sweep, study or weights name it refers to resolves, with its overrides valid for that experiment.
So a page that names a missing experiment, target or flag fails here, not in a reader's terminal.
"""

from __future__ import annotations

import ast
import importlib
import io
import os
import re
import shlex
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
# pages whose every bash command is held to this; the README is held to more: no program but make,
# fundus2video and `bash SCRIPT`
PAGES = ["README.md", "docs/USAGE.md", "docs/DATA.md", "docs/EVALUATION.md", "docs/TESTING.md"]
MAKEFILE = (ROOT / "Makefile").read_text()
TARGETS = set(re.findall(r"^([A-Za-z][\w-]*):", MAKEFILE, flags=re.M))


class CommandError(AssertionError):
    """A documented command that would not run as written."""


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(line number of the first line, body) of every ```lang block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def bash_commands(page: str) -> list[tuple[str, list[str]]]:
    """('page:line', argv) of every command of the page's bash blocks; continuation lines joined,
    comments dropped."""
    out = []
    for start, body in fenced_blocks((ROOT / page).read_text(), "bash"):
        pending, first = "", start
        for n, line in enumerate(body.splitlines(), start):
            if not pending:
                first = n
            pending += line
            if line.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            argv = shlex.split(pending, comments=True)
            if argv:
                out.append((f"{page}:{first}", argv))
            pending = ""
    return out


def check_command(argv: list[str], strict: bool) -> None:
    """Raise CommandError when `argv` would not run as written. strict: only make, fundus2video and
    `bash SCRIPT` may appear (the README); otherwise other programs pass, and the `-m fundus2video ...`
    inside them (srun, torchrun) is checked."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value before the program
        argv = argv[1:]
    program = argv[0]
    if program == "make":
        return check_make(argv[1:])
    if program == "fundus2video":
        return check_cli(argv[1:])
    if "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "fundus2video":
        return check_cli(argv[argv.index("-m") + 2:])
    if program == "bash" and len(argv) == 2:
        if not (ROOT / argv[1]).is_file():
            raise CommandError(f"bash {argv[1]}: no such script")
        return None
    if strict:
        raise CommandError(f"{program}: the README's commands are make, fundus2video and bash SCRIPT")
    return None


def check_make(args: list[str]) -> None:
    targets = [a for a in args if "=" not in a and not a.startswith("-")]
    vars_ = [a.split("=", 1)[0] for a in args if "=" in a]
    for target in targets or ["help"]:
        if target not in TARGETS:
            raise CommandError(f"make {target}: no such target in the Makefile")
    for var in vars_:
        if f"$({var})" not in MAKEFILE:
            raise CommandError(f"make ... {var}=: the Makefile does not read {var}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    if targets == ["help"] and not vars_:  # cheap: runs for real
        shown = subprocess.run(["make", "help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if shown.returncode != 0 or "make train" not in shown.stdout:
            raise CommandError(f"make help: status {shown.returncode}: {shown.stderr.strip()}")
        return None
    dry = subprocess.run(["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if dry.returncode != 0:
        raise CommandError(f"make -n {' '.join(args)}: status {dry.returncode}: {dry.stderr.strip()}")
    for line in dry.stdout.splitlines():
        if " -m fundus2video " in f"{line} ":
            check_cli(shlex.split(line.split(" -m fundus2video", 1)[1]))


def _parse(args: list[str]):
    from fundus2video.commands.cli import build_parser

    err = io.StringIO()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            return build_parser().parse_args(args)
    except SystemExit as exit_:
        raise CommandError(f"fundus2video {' '.join(args)}: {err.getvalue().strip() or exit_.code}") from None


def _run(args: list[str]) -> None:
    done = run_cli(*args)
    if done.returncode != 0:
        raise CommandError(f"fundus2video {' '.join(args)}: status {done.returncode}: {done.stderr.strip()[-600:]}")


def _overrides_load(experiment: str | Path, overrides: list[str], what: str) -> None:
    from fundus2video.config import load_config, resolve_experiment
    from fundus2video.errors import UserError

    try:
        load_config(resolve_experiment(str(experiment)), overrides)
    except UserError as err:
        raise CommandError(f"{what}: {err}") from None


def check_cli(args: list[str]) -> None:
    if not args or "--help" in args or "-h" in args:
        return _run(args or ["--help"])
    ns = _parse(args)
    command = ns.command if ns.command != "data" else f"data {ns.data_command}"
    if command == "train":  # every train is checked as its dry run: the resolved configuration, nothing trained
        return _run([*args, "--dry-run"] if "--dry-run" not in args else args)
    if command == "config" or (command == "weights" and ns.weights_command == "list"):
        return _run(args)
    if command in ("study", "ablation"):  # the units and their state; --report-only and --readme would write
        keep, skip = [], False
        for a in args:
            if skip:
                skip = False
            elif a == "--readme":
                skip = True
            elif a not in ("--report-only", "--dry-run") and not a.startswith("--readme="):
                keep.append(a)
        return _run([*keep, "--dry-run"])
    if command == "sweep":
        from fundus2video.commands.options import Parser
        from fundus2video.commands.sweep import _add_flags
        from fundus2video.config import resolve_sweep
        from fundus2video.errors import UserError
        from fundus2video.sweeps.spec import load_sweep

        flags = Parser(prog="fundus2video sweep", add_help=False, allow_abbrev=False)
        _add_flags(flags)
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                _, overrides = flags.parse_known_args(ns.overrides)
            sweep = load_sweep(resolve_sweep(ns.sweep))
        except SystemExit:
            raise CommandError(f"fundus2video {' '.join(args)}: {err.getvalue().strip()}") from None
        except UserError as error:
            raise CommandError(f"fundus2video {' '.join(args)}: {error}") from None
        return _overrides_load(sweep.experiment, overrides, f"fundus2video {' '.join(args)}")
    if command == "weights":
        from fundus2video.pretrained import WEIGHTS

        if ns.name != "all" and ns.name not in WEIGHTS:
            raise CommandError(f"weights fetch {ns.name}: not a known name ({', '.join(WEIGHTS)}, all)")
        return None
    if command == "data check":
        from fundus2video.commands.options import take_option

        experiment, overrides = take_option(ns.overrides, "--experiment")
        return _overrides_load(experiment or ns.experiment, overrides, f"fundus2video {' '.join(args)}")
    if command == "import-weights":
        return _overrides_load(ns.config, ns.overrides, f"fundus2video {' '.join(args)}")
    # generate, evaluate, export, demo, data phantom, data import-dicom: the parser has accepted them
    return None


COMMANDS = [(where, argv, page == "README.md") for page in PAGES for where, argv in bash_commands(page)]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_pages_have_commands():
    assert sum(strict for _, _, strict in COMMANDS) >= 10, "the README's bash blocks were not found"


@pytest.mark.parametrize("where,argv,strict", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_command_runs_as_written(where, argv, strict, at_root):
    check_command(argv, strict)


@pytest.mark.parametrize("command", [
    "make train EXP=nosuch",                                    # a missing experiment
    "make nosuch",                                              # a missing target
    "make train FOO=1",                                         # a variable the Makefile does not read
    'make train ARGS="model.ngff=3"',                           # an unknown key
    "fundus2video train nosuch",
    "fundus2video generate --ckpt a.ckpt --cf a.jpg --out a.mp4 --bogus",  # an unknown flag
    "fundus2video evaluate --ckpt a.ckpt --split bogus",
    "fundus2video study nosuch --dry-run",
    "fundus2video sweep nosuch --local",
    "fundus2video sweep smoke --local --bogus 3",
    "fundus2video weights fetch nosuch",
    "fundus2video import-weights --netG g.pth --config nosuch --out x.ckpt",
    "fundus2video data check data/cases --experiment nosuch",
    "wandb sync runs/x",                                        # README: no other programs
])
def test_a_wrong_command_fails(command, at_root):
    with pytest.raises(CommandError):
        check_command(shlex.split(command), strict=True)


def test_python_blocks_compile_and_import():
    """The pages' Python examples are valid Python, and every name they import exists."""
    for page in PAGES:
        for start, body in fenced_blocks((ROOT / page).read_text(), "python"):
            tree = ast.parse(body, filename=f"{page}:{start}")
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{page}:{start}: {node.module} has no {alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_slug_is_githubs():
    assert "what-make-train-leaves-behind" in anchors(ROOT / "README.md")
    assert slug("What `make train` leaves behind") == "what-make-train-leaves-behind"
    assert slug("Differences from the authors' release, and why") == "differences-from-the-authors-release-and-why"
    assert slug("Logging: wandb and CSV") == "logging-wandb-and-csv"
    assert slug("ONNX Runtime on the CPU") == "onnx-runtime-on-the-cpu"


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def without_code(text: str) -> str:
    """The markdown with fenced blocks and inline code spans blanked (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in without_fences(path.read_text()).splitlines():
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


LINKED = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", LINKED)
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {file or page}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_readme_stays_short():
    """The README is the first steps; the rest lives in docs/ (the pages it links)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 280
    for page in ("docs/USAGE.md", "docs/DATA.md", "docs/EVALUATION.md", "docs/TESTING.md"):
        assert f"]({page}" in text, f"the README does not link {page}"
