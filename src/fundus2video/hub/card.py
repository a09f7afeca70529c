"""Writing a Hub folder: the weights, config.json and the model card (README.md: front matter for the
Hub, training data, metrics, intended use), from a trained module and its run directory."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fundus2video.errors import UserError
from fundus2video.io import atomic_path

if TYPE_CHECKING:
    pass
from fundus2video.hub.format import (
    CARD,
    CONFIG,
    FILES,
    FORMAT_VERSION,
    LICENSE,
    TAGS,
    WEIGHTS,
    build_config,
    load_folder,
)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_data(module: Any, run_dir: Path | None) -> dict | None:
    """The training data section: the run's config.yaml where there is one, else the module's config."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        try:
            data = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True).get("data")
        except Exception:  # noqa: BLE001  (a card is written from whatever the run recorded; never fails on it)
            data = None
        if isinstance(data, dict):
            return data
    data = getattr(getattr(module, "cfg", None), "data", None)
    if data is not None and hasattr(data, "source"):  # a full experiment config, not a LoadedGenerator's view
        from omegaconf import OmegaConf

        return OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else None
    return None


def _split_counts(run_dir: Path | None) -> dict[str, tuple[int, int]]:
    """split.csv (data on disk): split -> (cases, patients)."""
    path = run_dir / "split.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    cases = Counter(r.get("split", "?") for r in rows)
    patients = {s: len({r.get("patient_id") for r in rows if r.get("split", "?") == s}) for s in cases}
    return {s: (cases[s], patients[s]) for s in sorted(cases)}


def _evaluations(run_dir: Path | None) -> list[dict]:
    """Every `<run dir>/eval/*/metrics.json` (and `eval/metrics.json`) that `evaluate` wrote."""
    if run_dir is None:
        return []
    paths = sorted((run_dir / "eval").glob("*/metrics.json")) + sorted((run_dir / "eval").glob("metrics.json"))
    return [report | {"_where": p.parent.relative_to(run_dir).as_posix()}
            for p in paths if (report := _read_json(p)) is not None and isinstance(report.get("metrics"), dict)]


def _md(value: Any) -> str:
    """A value as inline markdown code (backticks and newlines cannot break the card)."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def build_card(config: dict, data: dict | None, run: dict | None, splits: dict, evaluations: list[dict],
               license: str, repo_id: str | None) -> str:
    """README.md: the model card. Local paths and host names are left out: the card is for publishing."""
    g = config["generator"]
    front = ["---", "library_name: fundus2video", f"license: {license}", "pipeline_tag: image-to-video", "tags:",
             *[f"- {t}" for t in TAGS], "---", ""]
    lines = [
        "# Fundus2Video generator", "",
        "Generates a fluorescein angiography (FFA) video from a colour fundus photo (CF): the Fundus2Video method "
        "(MICCAI 2024), an autoregressive pix2pixHD-style GAN guided by an unsupervised knowledge mask, trained "
        f"with fundus2video {config['fundus2video_version']}.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| generator | {_md(g['class'].rsplit('.', 1)[-1])} (netg {_md(g['netg'])}), "
        + ", ".join(f"{k} {_md(v)}" for k, v in g["args"].items()) + " |",
        f"| knowledge-boosted attention | {', '.join(map(_md, g['args']['kba_stages'])) or 'none'} |",
        f"| window K | {config['window']} frames per step, input 3 + K = {config['input_channels']} channels |",
        f"| size | {config['size']} x {config['size']} (any multiple of {config['size_multiple']} runs) |",
        f"| frames | {config['n_frames']} by default (any number: the rollout is autoregressive) |",
        "| values | [-1, 1] in and out |",
        f"| weights | {_md(WEIGHTS)} (safetensors, float32); {_md(CONFIG)} describes the rest |", "",
        "Preprocessing (as in training, `fundus2video.inference.prepare_photo`): the field of view from the CF's "
        "green channel (zero outside), crop to its bounding box, resize to size x size, scale to [-1, 1].", "",
        "## Training data", "",
    ]
    if data is None:
        lines += ["Not recorded with this export.", ""]
    else:
        source = data.get("source", "?")
        lines.append(f"- source: {_md(source)}" + (" (the procedural phantom: synthetic eyes and videos, no patient "
                                                  "data)" if source == "phantom" else ""))
        if data.get("root"):
            lines.append(f"- data: {_md(Path(str(data['root'])).name)} (the folder or manifest's name)")
        lines.append(f"- images {data.get('size', '?')} x {data.get('size', '?')}, {data.get('n_frames', '?')} "
                     "frames per video")
        if source == "phantom" and isinstance(data.get("phantom"), dict):
            p = data["phantom"]
            lines.append(f"- phantom cases: {p.get('n_train')} train, {p.get('n_val')} val, {p.get('n_test')} test "
                         f"(anatomy seed {p.get('seed')})")
        split = data.get("split") if isinstance(data.get("split"), dict) else {}
        if splits:
            lines.append("- split by patient: " + ", ".join(f"{s} {n} cases ({p} patients)"
                                                           for s, (n, p) in splits.items()))
        elif split.get("fractions") and source != "phantom":
            lines.append(f"- split by patient, fractions {split['fractions']} (seed {split.get('seed')})")
        lines.append("")
    if run:
        commit = run.get("git_commit")
        lines += [f"Run: fundus2video {run.get('fundus2video', '?')}, torch {run.get('torch', '?')}, lightning "
                  f"{run.get('lightning', '?')}, seed {run.get('seed', '?')}"
                  + (f", code at git commit {_md(commit)}" + (" with uncommitted changes" if run.get("git_dirty")
                                                              else "") if commit else "") + ".", ""]
    lines += ["## Evaluation", ""]
    if not evaluations:
        lines += ["No evaluation was found with the run (`fundus2video evaluate` writes `<run>/eval/*/metrics.json`).",
                  ""]
    for report in evaluations:
        lines += [f"`fundus2video evaluate` ({report['_where']}): split {_md(report.get('split', '?'))}, "
                  f"{report.get('n_cases', '?')} cases, data {_md(report.get('data', '?'))}, size "
                  f"{report.get('size', '?')}.", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in report["metrics"].items()], ""]
        skipped = report.get("skipped")
        if isinstance(skipped, dict) and skipped:
            lines += ["Not measured: " + ", ".join(map(str, skipped)) + ".", ""]
    load = f"hf://{repo_id}" if repo_id else "path/to/this/folder"
    lines += [
        "## Intended use", "",
        "Research on FFA synthesis from fundus photos: method development, comparison, teaching. **Not for "
        "diagnosis** or any clinical decision: a generated angiogram is a plausible picture, not a measurement of "
        "this patient's circulation, and must never replace a real angiography.", "",
        "## Limitations", "",
        "- Trained only on the data above: other cameras, fields of view, populations and diseases are out of its "
        "distribution, and it says nothing when a photo is.",
        "- It can miss or invent lesions (leakage, non-perfusion) and gets timing and contrast only approximately; "
        "the knowledge mask that guided training comes from the training videos, not from clinical labels.",
        f"- Other sizes (multiples of {config['size_multiple']}) run, but it was trained at {config['size']} x "
        f"{config['size']} only.",
        "- Synthetic (phantom) training data says nothing about real photos." if data and data.get("source") ==
        "phantom" else "- Check the terms of the training data before sharing outputs or weights.", "",
        "## How to use", "",
        "With fundus2video installed (the version in config.json or newer):", "",
        "```bash",
        f"fundus2video generate --ckpt {load} --cf photo.jpg --out video.mp4", "```", "",
        "```python", "from fundus2video import load_generator",
        f"gen = load_generator(\"{load}\")  # no Lightning needed; safetensors loading runs no code",
        "video = gen(cf, n_frames=gen.n_frames)  # cf (B, 3, H, W) in [-1, 1] -> (B, T, 1, H, W)", "```", "",
    ]
    return "\n".join(front + lines)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def save_hub(module: Any, out: str | Path, run_dir: str | Path | None = None, *, overwrite: bool = False,
             license: str = "mit", repo_id: str | None = None, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write the Hub folder of `module` (a Fundus2VideoModule or a LoadedGenerator) to `out`.

    `run_dir`: the training run (config.yaml, run.json, split.csv, eval/*/metrics.json) the model
    card describes. An existing non-empty `out` is refused unless `overwrite`; whatever the flag,
    nothing in `inputs` (the checkpoint, its folder) is written over. Each file is written
    atomically, the weights first and config.json last, and the folder is read back and compared
    with the generator before returning. `repo_id` only goes into the card's usage lines.
    """
    from safetensors.torch import save


    out = Path(out)
    if not LICENSE.fullmatch(license):
        raise UserError(f"--license {license!r}: expected a Hub license identifier such as mit, apache-2.0, other")
    for source in map(Path, inputs):
        if _same(out, source) or any(_same(out / name, source) for name in FILES):
            raise UserError(f"--out {out}: would write over the input {source}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: the folder exists and is not empty (--overwrite replaces its "
                        f"{', '.join(FILES)})")
    run_dir = Path(run_dir) if run_dir is not None else None
    config = build_config(module.cfg)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.generator.state_dict().items()}
    card = build_card(config, _run_data(module, run_dir), _read_json(run_dir / "run.json") if run_dir else None,
                      _split_counts(run_dir), _evaluations(run_dir), license, repo_id)
    created = not out.exists()
    try:
        with atomic_path(out / WEIGHTS) as tmp:
            # serialised in memory and written by Python: a full disk is then an OSError (one line), not
            # safetensors' own error type
            tmp.write_bytes(save(state, metadata={"format": "pt", "fundus2video_format_version": str(FORMAT_VERSION)}))
        with atomic_path(out / CARD) as tmp:
            tmp.write_text(card)
        with atomic_path(out / CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        reloaded = load_folder(out)
        for key, value in reloaded.generator.state_dict().items():
            if not torch.equal(value, state[key]):
                raise UserError(f"{out / WEIGHTS}: hub export check failed: '{key}' differs after reloading; "
                                "nothing was kept")
    except BaseException:
        if created:  # leave no half-written folder behind (only this export's files are in it)
            for name in FILES:
                (out / name).unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    return out
