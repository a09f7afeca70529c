"""Files the package reads and writes whole: atomic writes, torch files, checkpoints.

Every write goes to a temporary file in the target folder and is renamed into place, so a crash
never leaves a half-written file under the final name. Every torch file is read with
`weights_only` loading (a file from elsewhere runs none of its code), and a file that is not
what it should be fails in one line naming it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundus2video.errors import ConfigError, UserError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path` (same suffix); rename it onto `path` on success. Only a
    regular file is ever replaced: a device, a pipe or a socket at `path` stops the write (a rename
    would swap `/dev/null` itself for a file)."""
    path = Path(path)
    refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.stem}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise _as_written(err, path, prefix) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        refuse_special(path)  # made while the temporary was written
        os.replace(tmp, path)
    except OSError as err:
        raise _as_written(err, path, prefix) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def staged_outputs(out: str | Path, owned: set[str], tag: str = "outputs"):
    """A command's set of output files appears together or not at all: yields a hidden staging folder
    inside `out` to write them into; on success each is renamed into `out` (renames are instant) and
    those of `owned` (the names the command writes) that this run did not write are removed, so no
    earlier run's file stays beside the new ones. On any failure (a full disk, an error, Ctrl-C) the
    staging folder goes and `out` is as it was. A staging folder a kill left behind is cleared on the
    next run."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f".{tag}-staging-"
    for stale in out.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield stage
        written = {p.name for p in stage.iterdir() if p.is_file()}
        for name in sorted(written):
            refuse_special(out / name)
            os.replace(stage / name, out / name)
        for name in owned - written:
            if (out / name).is_file():
                (out / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def swap_folder_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` onto `out`; an old `out` is moved aside first and removed only
    once the new one is in place (a failure puts it back)."""
    import shutil

    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def refuse_special(path: str | Path) -> None:
    """UserError when `path` exists and is neither a regular file nor a folder (a character or block
    device, a named pipe, a socket): no command writes over one, whatever --overwrite says."""
    try:
        mode = os.stat(path).st_mode  # through a symlink: what a write would reach
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return  # unreadable: the write itself will say why
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    raise UserError(f"{path}: is {kind}, not a regular file; only regular files are replaced (choose another path)")


def _as_written(err: OSError, path: Path, prefix: str) -> OSError:
    """`err` naming the file the user asked for instead of its hidden temporary sibling."""
    name = os.path.basename(str(err.filename or ""))
    if not name.startswith(prefix):
        return err
    return type(err)(err.errno, err.strerror, str(path))


def file_in_the_way(path: str | Path, itself: bool = True) -> Path | None:
    """The existing file among `path` (when `itself`) and its parents that keeps `path` from being a
    folder or going into one, or None: what to name in a message instead of "file exists"."""
    path = Path(path)
    for candidate in (path, *path.parents) if itself else path.parents:
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def refuse_input_as_output(flag: str, outputs: list[str | Path], inputs: list[str | Path | None]) -> None:
    """Stop (UserError) when a file to be written is one of the inputs: writing it would destroy
    what the user gave. Compared after resolving links and relative paths."""
    from fundus2video.errors import UserError

    given = {Path(p).resolve(): Path(p) for p in inputs if p is not None}
    for out in outputs:
        if Path(out).resolve() in given:
            raise UserError(f"{flag} {out}: is the input {given[Path(out).resolve()]}; writing it would replace the "
                            "input (choose another path)")


def first_line(err: BaseException) -> str:
    """The gist of a loader's exception: pickle and zip errors come in many types, with advice
    (e.g. about `weights_only`) that would mislead here."""
    text = str(err).split(". ")[0].splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:160]}"


def read_torch_file(path: str | Path, expected: str) -> Any:
    """The object in a torch file, loaded with `weights_only`; UserError naming the file and
    `expected` (what it should hold) when it is missing or unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (expected {expected})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (corrupt zip, truncated file, a pickle weights_only refuses)
        raise UserError(f"{path}: not a loadable PyTorch file ({first_line(err)}); expected {expected}") from None


def read_state_dict(path: str | Path, expected: str = "a PyTorch state dict") -> dict[str, torch.Tensor]:
    """A plain state dict of tensors from `path`: a Lightning checkpoint's `state_dict` is taken
    out, and DataParallel's `module.` prefix removed."""
    import torch

    state = read_torch_file(path, expected)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, Mapping) else "a dict holding non-tensors"
        raise UserError(f"{path}: holds {found}; expected {expected}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def read_checkpoint(path: str | Path, flag: str) -> dict:
    """A fundus2video checkpoint as a dict (its config under `hyper_parameters.config`); `flag` is
    the option or key that named it, for the message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag}: checkpoint not found: {path}")
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file: say which)
        raise ConfigError(f"{flag}: {path} is not a fundus2video checkpoint ({first_line(err)})") from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping) \
            or not isinstance(checkpoint.get("hyper_parameters", {}).get("config"), Mapping):
        raise ConfigError(f"{flag}: {path} is not a fundus2video checkpoint (no state_dict and "
                          "hyper_parameters.config); expected a .ckpt written by fundus2video train or export")
    return dict(checkpoint)
