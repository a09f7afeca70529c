"""Where a trained model comes from: a local `.ckpt` or Hub folder, an http(s) URL of either (downloaded
once into `torch.hub.get_dir()/fundus2video/<sha256 of the URL>/`), or `hf://REPO_ID[@REV]` (through
`huggingface_hub`, the `fundus2video[hub]` extra); pushing a folder to the Hub; and `load_module`,
`load_generator`, the one entry for any of them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import torch

from fundus2video.devices import check_device
from fundus2video.download import download, json_file, safetensors_file, shown, zip_file
from fundus2video.errors import UserError

if TYPE_CHECKING:
    from fundus2video.module import Fundus2VideoModule
from fundus2video.hub.format import (
    CONFIG,
    FILES,
    HUB_MISSING,
    REPO_ID,
    WEIGHTS,
    LoadedGenerator,
    build_config,
    load_folder,
)
from fundus2video.pretrained import offline


def hf_module():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(HUB_MISSING) from None
    return huggingface_hub


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"{repo_id!r}: not a Hugging Face repository id (expected NAME or OWNER/NAME)")
    return repo_id


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a Hub folder to the model repository `repo_id` (created if missing); returns its URL."""
    hf = hf_module()
    check_repo_id(repo_id)
    import fundus2video

    api = hf.HfApi(library_name="fundus2video", library_version=fundus2video.__version__)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", allow_patterns=list(FILES),
                          commit_message=f"fundus2video {fundus2video.__version__}: upload the generator")
    except Exception as err:  # noqa: BLE001  (huggingface_hub and its HTTP client raise types of their own)
        raise UserError(f"push to {repo_id} failed: {str(err).strip().splitlines()[0] if str(err) else err!r}") \
            from None
    return f"https://huggingface.co/{repo_id}"


def pull(spec: str) -> Path:
    """`hf://REPO_ID[@REV]` -> the local folder of its files (huggingface_hub's cache)."""
    hf = hf_module()
    repo_id, _, revision = spec.removeprefix("hf://").partition("@")
    check_repo_id(repo_id)
    import fundus2video

    try:
        path = hf.snapshot_download(repo_id, revision=revision or None, allow_patterns=list(FILES),
                                    library_name="fundus2video", library_version=fundus2video.__version__)
    except Exception as err:  # noqa: BLE001  (huggingface_hub and its HTTP client raise types of their own)
        raise UserError(f"{spec}: download failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    return Path(path)


def download_folder(key: str) -> Path:
    """The download folder of URL `key`: torch.hub.get_dir()/fundus2video/<sha256 of the URL>."""
    return Path(torch.hub.get_dir()) / "fundus2video" / hashlib.sha256(key.encode()).hexdigest()


def _download(url: str, dst: Path) -> None:
    """`url` to `dst` unless it is there already (torch.hub writes a partial file, renamed at the end)."""
    if dst.is_file():
        return
    if (var := offline()) is not None:  # the same switch as the pretrained weights'
        raise UserError(f"{shown(url)}: not in the cache ({dst}) and offline ({var} is set)")
    check = {".ckpt": zip_file, ".safetensors": safetensors_file, ".json": json_file}.get(dst.suffix)
    download(url, dst, what=dst.name, check=check)


def fetch_url(url: str) -> Path:
    """An http(s) URL of a `.ckpt` -> its cached file; of a Hub folder's `model.safetensors` or
    `config.json` -> the cached folder, both files fetched (the cache key is then the folder's URL)."""
    parts = urlsplit(url)
    head, _, name = parts.path.rpartition("/")
    if name.endswith(".ckpt"):
        dst = download_folder(url) / name
        _download(url, dst)
        return dst
    if name in (WEIGHTS, CONFIG):
        folder = download_folder(urlunsplit(parts._replace(path=f"{head}/")))
        for sibling in (CONFIG, WEIGHTS):
            _download(urlunsplit(parts._replace(path=f"{head}/{sibling}")), folder / sibling)
        return folder
    raise UserError(f"{url}: expected the URL of a .ckpt, or of a Hub folder's {WEIGHTS} or {CONFIG}")


def local_path(spec: str | Path) -> Path:
    """A checkpoint argument -> a local path: URLs and hf:// are downloaded, paths are kept as they are."""
    text = str(spec)
    if text.startswith("hf://"):
        return pull(text)
    if text.startswith(("http://", "https://")):
        return fetch_url(text)
    return Path(spec)


def hub_folder(path: Path) -> Path | None:
    """The Hub folder that `path` names (the folder, or its config.json / .safetensors), else None."""
    if path.is_dir():
        return path
    if path.name == CONFIG or path.suffix == ".safetensors":
        return path.parent
    return None


def load_module(ckpt: str | Path, device: str = "cpu") -> Fundus2VideoModule | LoadedGenerator:
    """A trained model in eval mode from any source: a fundus2video `.ckpt` (the LightningModule), a Hub
    folder (config.json + model.safetensors, `export --format hub`: a `LoadedGenerator`, inference
    only, with the same `cfg.data` / `device` / call as the module), an http(s) URL of either, or
    `hf://REPO_ID[@REV]`. A file that is not a checkpoint fails in one line naming it."""
    return _load(local_path(ckpt), str(check_device(device)))  # URLs and hf:// downloaded into their caches


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """A generator for inference from the same sources as `load_module`: a checkpoint's module reduced
    to its generator and config. Folders load without Lightning; a `.ckpt` is read with `weights_only`."""
    device, local = str(check_device(device)), local_path(path)
    model = _load(local, device)
    if isinstance(model, LoadedGenerator):
        return model
    return LoadedGenerator(model.generator, build_config(model.cfg), str(local)).to(device)


def _load(local: Path, device: str) -> Fundus2VideoModule | LoadedGenerator:
    if (folder := hub_folder(local)) is not None:
        return load_folder(folder, device)
    from fundus2video.module import load_checkpoint_module  # a Lightning checkpoint: needs Lightning

    return load_checkpoint_module(local, device)
