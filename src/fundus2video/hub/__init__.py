"""A trained generator as a Hugging Face Hub folder, and loading it back without Lightning.

The folder (`save_hub`, `fundus2video export --format hub`) holds
  model.safetensors  the generator's state dict (KBA attention heads included), float32
  config.json        what rebuilds and runs it: generator class and arguments, window K, input
                     channels, training size and frame count, value range, preprocessing
  README.md          a model card: front matter for the Hub, training data, metrics, intended use
safetensors is a plain tensor format: loading one runs no code (unlike a pickled .ckpt), and the
generator is rebuilt from a fixed table of this package's classes, never from a name in the file.

`load_generator` (and `fundus2video generate --ckpt`) accepts such a folder, a `.ckpt`, an
`http(s)://` URL of a `.ckpt` or of a folder's `model.safetensors` / `config.json` (downloaded
once into `torch.hub.get_dir()/fundus2video/<sha256 of the URL>/`), or `hf://REPO_ID[@REV]`
(through `huggingface_hub`, the optional extra `fundus2video[hub]`).

Only torch, safetensors and this package's network code are imported here: loading a folder and
rolling it out never imports Lightning. Callers of a `.ckpt` do (it is a Lightning checkpoint).
"""

from fundus2video.devices import DEVICES, check_device  # re-exported: hub's public names stay
from fundus2video.hub.card import build_card, save_hub
from fundus2video.hub.format import (
    CARD,
    CONFIG,
    FILES,
    FORMAT_VERSION,
    HUB_MISSING,
    WEIGHTS,
    LoadedGenerator,
    build_config,
    generator_config,
    load_folder,
)
from fundus2video.hub.sources import (
    check_repo_id,
    download_folder,
    fetch_url,
    hf_module,
    hub_folder,
    load_generator,
    load_module,
    local_path,
    pull,
    push,
)
from fundus2video.pretrained import OFFLINE_VARS  # one offline switch for every download

__all__ = ["CARD", "CONFIG", "DEVICES", "FILES", "FORMAT_VERSION", "HUB_MISSING", "OFFLINE_VARS", "WEIGHTS",
           "LoadedGenerator", "build_card", "build_config", "check_device", "check_repo_id", "download_folder",
           "fetch_url", "generator_config", "hf_module", "hub_folder", "load_folder", "load_generator",
           "load_module", "local_path", "pull", "push", "save_hub"]
