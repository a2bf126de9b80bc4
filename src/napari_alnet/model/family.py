"""The network families napari-alnet builds: a registry from a family's name to its builder and config type.

A weight file names its family (``architecture`` in its metadata; files without one are AL-Net), so loading it
builds the right network. AL-Net is registered as ``alnet``; another family is added with ``register_family``
(a plugin, a test) and then loads, predicts, tiles, runs blockwise and fine-tunes like AL-Net
(``network.SegmentationNetwork`` says what it must provide).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .alnet import ALNet
from .config import ALNetConfig
from .network import NetworkConfig, SegmentationNetwork

#: The family of a weight file that names none (every file written before families existed).
DEFAULT_FAMILY = "alnet"


class UnknownFamily(ValueError):
    """A family name no registered family has; the message names the known ones."""


@dataclass(frozen=True)
class Family:
    """A registered family: its ``name`` (as weight files store it), how to build a network from a config
    (``builder``), the config's type (``config_type.from_json(text)`` reads a stored one) and a ``title`` for
    people (``AL-Net``)."""

    name: str
    builder: Callable[[NetworkConfig], SegmentationNetwork]
    config_type: type
    title: str


class Families:
    """Registered families by name (one instance, ``FAMILIES``, is the installation's)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Family] = {}

    def register(self, family: Family, *, replace: bool = False) -> Family:
        if not replace and family.name in self._by_name:
            raise ValueError(f"network family {family.name!r} is already registered")
        if not replace and any(f.config_type is family.config_type for f in self._by_name.values()):
            raise ValueError(f"config type {family.config_type.__name__} already belongs to another family")
        self._by_name[family.name] = family
        return family

    def unregister(self, name: str) -> None:
        if name == DEFAULT_FAMILY:
            raise ValueError(f"the {DEFAULT_FAMILY!r} family cannot be unregistered")
        self._by_name.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> Family:
        family = self._by_name.get(name)
        if family is None:
            raise UnknownFamily(f"unknown network family {name!r} (known: {', '.join(self._by_name)})")
        return family

    def of_config(self, config: NetworkConfig) -> Family:
        for family in self._by_name.values():
            if type(config) is family.config_type:
                return family
        raise UnknownFamily(f"{type(config).__name__} is the config of no registered network family "
                            f"(known: {', '.join(self._by_name)})")


FAMILIES = Families()
FAMILIES.register(Family(DEFAULT_FAMILY, ALNet, ALNetConfig, "AL-Net"))


def register_family(name: str, builder: Callable[[NetworkConfig], SegmentationNetwork], config_type: type, *,
                    title: str | None = None, replace: bool = False) -> Family:
    """Register a network family: ``builder(config)`` returns a training-form ``SegmentationNetwork``;
    ``config_type`` is its config's class (a ``NetworkConfig`` with ``from_json``)."""
    if not name or not name.isidentifier():
        raise ValueError(f"a family name is a short identifier (stored in weight files), got {name!r}")
    if not callable(getattr(config_type, "from_json", None)):
        raise TypeError(f"{config_type.__name__} needs a from_json(text) classmethod to be read from weight files")
    return FAMILIES.register(Family(name, builder, config_type, title or name), replace=replace)


def unregister_family(name: str) -> None:
    """Forget a registered family (not ``alnet``); nothing happens for an unknown name."""
    FAMILIES.unregister(name)


def known_families() -> tuple[str, ...]:
    return FAMILIES.names()


def family_named(name: str) -> Family:
    """The registered family ``name``; ``UnknownFamily`` (a ``ValueError``) naming the known ones otherwise."""
    return FAMILIES.get(name)


def family_of(config_or_network: NetworkConfig | SegmentationNetwork) -> Family:
    """The family a config (or a network, by its ``config``) belongs to."""
    config = getattr(config_or_network, "config", config_or_network)
    return FAMILIES.of_config(config)


def build_network(config: NetworkConfig | None = None) -> SegmentationNetwork:
    """A training-form network of ``config``'s family (``None``: the default AL-Net)."""
    config = ALNetConfig() if config is None else config
    return family_of(config).builder(config)


def config_from_json(family: str, text: str) -> NetworkConfig:
    """The config of ``family`` stored as ``text``; ``UnknownFamily`` or ``ValueError`` when unusable."""
    return family_named(family).config_type.from_json(text)
