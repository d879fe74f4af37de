"""The timm zoo by family, and one small representative model per family.

Sweeping all of timm's ~1400 models is too slow to run often, but timm groups
its models by the module that defines them (``timm.models.resnet`` ...), and the
models of one module share their building blocks: an adapter or a failure found
on one member applies to the whole family. The smallest member is the cheapest
model that still exercises those blocks, so one per family covers the zoo's
architectures at a fraction of the cost.

Sizes come from building on ``torch.device("meta")``: no weights are allocated,
so counting every model takes seconds of CPU and no memory worth mentioning.
Because that still means building 1400 models, the chosen representatives are
cached in ``data/zoo_representatives.json`` with the timm version they were
computed for; :func:`write_representatives` (or ``python -m pytest_tprune.engine.zoo``)
refreshes it after a timm upgrade.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
CACHE_PATH = DATA_DIR / "zoo_representatives.json"
"""Where the computed representatives are cached (family -> model and params)."""


def families() -> dict[str, list[str]]:
    """timm family (defining module, e.g. ``resnet``) -> its model names.

    Families are sorted by name and models keep timm's natural order, so the
    mapping is the same on every call for one timm version. Families without
    any registered model are left out.
    """
    import timm

    found: dict[str, list[str]] = {}
    for module in sorted(timm.list_modules()):
        names = list(timm.list_models(module=module))
        if names:
            found[module] = names
    return found


def family_of(models: Iterable[str]) -> dict[str, str]:
    """Model name -> its timm family, for those of ``models`` that timm knows."""
    wanted = set(models)
    return {name: family for family, names in families().items() for name in names if name in wanted}


def meta_param_count(name: str) -> int | None:
    """Parameters of timm model ``name``, counted on the meta device.

    ``None`` when the model cannot be built there (its constructor computes
    with real tensor values, say): the size is then unknown, not zero.
    """
    import timm
    import torch

    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
    except Exception:  # any failure means the size is unknown
        return None
    return sum(p.numel() for p in model.parameters())


def _rank(name: str, params: int | None) -> tuple[bool, int, str]:
    """Sort key: known sizes first, smallest first, ties by name (deterministic)."""
    return (params is None, params if params is not None else 0, name)


def pick_smallest(counts: Mapping[str, int | None]) -> str:
    """The smallest model of ``counts`` (name -> meta params); unknown sizes rank last."""
    if not counts:
        raise ValueError("no models to choose from")
    return min(counts, key=lambda name: _rank(name, counts[name]))


def representative_counts(
    groups: Mapping[str, list[str]] | None = None,
) -> dict[str, tuple[str, int | None]]:
    """family -> (smallest model, its meta param count), computed afresh.

    Builds every model of every family on the meta device; use the cache
    (:func:`load_representatives`) unless timm changed.
    """
    chosen: dict[str, tuple[str, int | None]] = {}
    for family, names in (groups if groups is not None else families()).items():
        counts = {name: meta_param_count(name) for name in names}
        best = pick_smallest(counts)
        chosen[family] = (best, counts[best])
    return chosen


def representatives() -> dict[str, str]:
    """family -> smallest model by meta param count, computed afresh (see :func:`representative_counts`)."""
    return {family: model for family, (model, _) in representative_counts().items()}


def _timm_version() -> str:
    import timm

    return str(timm.__version__)


def write_representatives(
    path: Path = CACHE_PATH, chosen: Mapping[str, tuple[str, int | None]] | None = None
) -> dict[str, Any]:
    """Compute (unless given) and cache the representatives; returns what was written.

    The file is replaced atomically, so a reader never sees half of it, and
    written with sorted keys so that a refresh diffs cleanly.
    """
    chosen = representative_counts() if chosen is None else chosen
    content: dict[str, Any] = {
        "timm_version": _timm_version(),
        "representatives": {family: {"model": model, "params": params} for family, (model, params) in chosen.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(content, file, sort_keys=True, indent=1)
        file.write("\n")
    os.replace(tmp, path)
    return content


def read_cache(path: Path = CACHE_PATH) -> dict[str, Any]:
    """The cache file as written: ``timm_version`` and ``representatives``."""
    with path.open(encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


@functools.cache
def representative_param_counts(path: Path = CACHE_PATH) -> dict[str, int]:
    """model -> parameter count of the family representatives, when the cache matches this timm.

    The memory guard needs a count before building; for these models it is
    already known, which saves a meta-device build per model.
    """
    if not path.exists():
        return {}
    data = read_cache(path)
    if data.get("timm_version") != _timm_version():
        return {}
    return {entry["model"]: int(entry["params"]) for entry in data.get("representatives", {}).values()}


def cache_is_current(path: Path = CACHE_PATH) -> bool:
    """Whether the cache exists and was computed with the installed timm."""
    return path.exists() and read_cache(path).get("timm_version") == _timm_version()


def load_representatives(path: Path = CACHE_PATH, refresh: bool = False) -> dict[str, str]:
    """family -> representative model, from the cache.

    A cache computed for another timm version is still returned (families
    rarely change between releases) but with a warning; ``refresh=True``
    recomputes and rewrites it instead, which takes a few minutes.
    """
    if refresh and not cache_is_current(path):
        write_representatives(path)
    data = read_cache(path)
    cached, installed = data.get("timm_version"), _timm_version()
    if cached != installed:
        warnings.warn(
            f"{path} was computed for timm {cached}, timm {installed} is installed: "
            "refresh it with 'python -m pytest_tprune.engine.zoo'",
            stacklevel=2,
        )
    return {family: entry["model"] for family, entry in sorted(data["representatives"].items())}


def load_representative_params(path: Path = CACHE_PATH) -> dict[str, int | None]:
    """representative model -> its cached meta param count (``None`` if unknown)."""
    entries = read_cache(path)["representatives"].values()
    return {entry["model"]: entry["params"] for entry in entries}


def main() -> None:
    """Recompute the cache: ``python -m pytest_tprune.engine.zoo``."""
    content = write_representatives()
    chosen = content["representatives"]
    print(f"wrote {len(chosen)} representatives for timm {content['timm_version']} to {CACHE_PATH}")


if __name__ == "__main__":
    main()
