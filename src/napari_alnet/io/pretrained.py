"""Weight files shipped inside the package (``load_model("em")`` works offline)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_NAMES = ("em", "fundus", "dermoscopy")
#: The weight files live in the package's ``pretrained/`` data folder.
_HERE = Path(__file__).resolve().parent.parent / "pretrained"


def builtin_path(name: str) -> Path:
    return _HERE / f"{name}.safetensors"


def shipped_models() -> list[str]:
    """Names of the built-in models whose weight file is present in this installation."""
    return [name for name in BUILTIN_NAMES if builtin_path(name).is_file()]
