"""Reading back the bioimage.io model packages napari-alnet exports (zip or folder); no bioimage.io library needed.

A package is a folder or zip holding ``rdf.yaml`` (or ``bioimageio.yaml``). It is ours when that description
has ``config.napari_alnet`` with ``format: napari-alnet``: the same metadata strings a weight file holds. The
fused weights come from its ``pytorch_state_dict`` entry, checked against the sha256 the description records and
read with ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and plain containers, no
code). Any other zoo model is refused with a message that says it is not an AL-Net.

Everything is bounded before it is read: members' sizes (from the zip's central directory, or the folder's file
sizes) against ``MAX_DESCRIPTION_BYTES`` / ``MAX_WEIGHTS_BYTES``, reads capped at that size (a central directory
that lies is caught), and the description loaded by a YAML loader that refuses aliases (no "billion laughs").
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

import torch

from ..model.metadata import FORMAT, FORMAT_VERSION, ModelMetadata

#: Names of the description file at a package's root (``rdf.yaml`` is what bioimageio.spec writes).
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: The key under the description's ``config`` that holds napari-alnet's metadata.
CONFIG_KEY = "napari_alnet"
#: Largest description read (ours are ~30 KB with the model card).
MAX_DESCRIPTION_BYTES = 4 << 20
#: Largest state dict read (an AL-Net's fused float32 weights are 4-60 MB; 64 M parameters would be 256 MB).
MAX_WEIGHTS_BYTES = 320 << 20


@functools.cache
def _no_alias_loader() -> type:
    """PyYAML's safe loader refusing aliases: a 1 KB document of nested aliases expands to gigabytes (PyYAML is
    imported here: loading a weight file, the path of every ``alnet segment``, does not need it)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not accepted in a "
                                                  "package description (aliases can expand a small file to "
                                                  "gigabytes)", event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


class PackageError(ValueError):
    """A package that cannot be loaded as an AL-Net; the message names it and says why."""


def description_name(path: str | Path) -> str | None:
    """The description file's name inside a package folder or zip, ``None`` when ``path`` is not a package."""
    path = Path(path)
    if path.is_dir():
        return next((n for n in DESCRIPTION_NAMES if (path / n).is_file()), None)
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return None
        return next((n for n in DESCRIPTION_NAMES if n in names), None)
    return None


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a bioimage.io package (a folder or zip with ``rdf.yaml`` / ``bioimageio.yaml``)."""
    return description_name(path) is not None


def _read_member(path: Path, name: str, limit: int) -> bytes:
    """The bytes of the file ``name`` (relative, inside the package) of a package folder or zip; ``PackageError``
    when its size (the zip's central directory's, or the file's) exceeds ``limit``, checked before reading (and
    the read itself stops past ``limit``, should the directory lie)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or "://" in name:
        raise PackageError(f"{path}: refers to {name!r}, which is not a file inside the package")
    try:
        if path.is_dir():
            _check_size(path, name, (path / rel).stat().st_size, limit)
            with open(path / rel, "rb") as fh:
                data = fh.read(limit + 1)
        else:
            with zipfile.ZipFile(path) as zf:
                _check_size(path, name, zf.getinfo(str(rel)).file_size, limit)
                with zf.open(str(rel)) as fh:
                    data = fh.read(limit + 1)
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{path}: the package lacks {name!r} ({exc})") from exc
    _check_size(path, name, len(data), limit)
    return data


def _check_size(path: Path, name: str, size: int, limit: int) -> None:
    if size > limit:
        raise PackageError(f"{path}: {name} is {size / 2**20:.1f} MB or more (limit {limit / 2**20:.0f} MB for this "
                           "file in an AL-Net package); refusing to read it")


def read_description(path: str | Path) -> dict:
    """The package's description (rdf.yaml) as a dict; ``PackageError`` when it is missing or unreadable."""
    path = Path(path)
    name = description_name(path)
    if name is None:
        raise PackageError(f"{path}: is not a bioimage.io package (no {' or '.join(DESCRIPTION_NAMES)})")
    import yaml

    try:
        rdf = yaml.load(_read_member(path, name, MAX_DESCRIPTION_BYTES), Loader=_no_alias_loader())
    except (yaml.YAMLError, RecursionError) as exc:
        raise PackageError(f"{path}: {name} is not a valid or accepted YAML description ({exc})") from exc
    if not isinstance(rdf, dict):
        raise PackageError(f"{path}: {name} does not describe a resource")
    return rdf


def _our_metadata(path: Path, rdf: dict) -> dict[str, str]:
    """The napari-alnet metadata strings of a description, or ``PackageError`` saying it is not ours."""
    what = f"a bioimage.io {rdf.get('type', 'resource')} ({rdf.get('name', 'unnamed')!r})"
    if rdf.get("type") != "model":
        raise PackageError(f"{path}: is {what}, not a model")
    meta = (rdf.get("config") or {}).get(CONFIG_KEY)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PackageError(f"{path}: is {what} but not an AL-Net exported by napari-alnet (its description has no "
                           f"config.{CONFIG_KEY} entry), so load_model cannot use it; run foreign zoo models with "
                           "bioimageio.core, ilastik, deepImageJ or QuPath")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{path}: napari-alnet metadata version {meta.get('format_version')!r} is not supported "
                           f"(this napari-alnet reads version {FORMAT_VERSION})")
    return {str(k): str(v) for k, v in meta.items()}


def _state_dict(path: Path, rdf: dict) -> dict[str, torch.Tensor]:
    """The pytorch_state_dict weights, checked against the recorded sha256, read without running code."""
    entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(entry, dict) or not entry.get("source"):
        raise PackageError(f"{path}: has no pytorch_state_dict weights (napari-alnet reads those)")
    data = _read_member(path, str(entry["source"]), MAX_WEIGHTS_BYTES)
    expected = entry.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise PackageError(f"{path}: {entry['source']} does not match the sha256 in the description (corrupt or "
                           "altered package)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses anything but tensors and plain containers
        raise PackageError(f"{path}: {entry['source']} is not a plain state dict of tensors ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackageError(f"{path}: {entry['source']} is not a plain state dict of tensors")
    return state


def read_package(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMetadata]:
    """Fused tensors and metadata of a package napari-alnet exported; ``PackageError`` for anything else."""
    path = Path(path)
    rdf = read_description(path)
    strings = _our_metadata(path, rdf)
    try:
        metadata = ModelMetadata.from_strings(strings)
    except (KeyError, ValueError, TypeError) as exc:
        raise PackageError(f"{path}: has unreadable napari-alnet metadata ({exc})") from exc
    return _state_dict(path, rdf), metadata
