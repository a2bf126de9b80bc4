"""The one rule for what an array's axes mean: a trailing axis of 3 or 4 is colour (RGB / RGBA).

Every reader, the engine, training and the widgets decide "stack or single image, colour or not" here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Sizes of a trailing axis taken as colour channels.
COLOUR_SIZES = (3, 4)
SHAPES = "(Y, X), (Y, X, 3|4) RGB(A), (Z, Y, X) or (Z, Y, X, 3|4)"


def has_colour_axis(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` ends in an axis that reads as colour (3 or 4 channels after at least two spatial axes)."""
    return len(shape) >= 3 and shape[-1] in COLOUR_SIZES


@dataclass(frozen=True)
class Layout:
    """How an image's axes read: ``is_stack`` (a Z axis first), ``is_rgb`` (a trailing colour axis)."""

    is_stack: bool
    is_rgb: bool
    shape: tuple[int, ...]

    @property
    def spatial(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X): the shape without the colour axis."""
        return self.shape[:-1] if self.is_rgb else self.shape

    @property
    def plane(self) -> tuple[int, int]:
        """(Y, X) of one slice."""
        return self.spatial[-2], self.spatial[-1]


def image_layout(shape: tuple[int, ...], rgb: bool | None = None) -> Layout:
    """The layout of an image shape; ``rgb=None`` takes a trailing axis of 3 or 4 as colour channels.

    ``ValueError`` (naming the shape and what is accepted) for anything that is not 2D or 3D once the colour axis
    is set aside, and for an empty image.
    """
    shape = tuple(int(s) for s in shape)
    trailing_rgb = has_colour_axis(shape)
    if rgb is None:
        rgb = trailing_rgb
    if rgb and not trailing_rgb:
        raise ValueError(f"rgb=True needs a trailing colour axis of 3 or 4; got an image of shape {shape}")
    spatial = len(shape) - int(rgb)
    if spatial not in (2, 3):
        raise ValueError(f"expected an image shaped {SHAPES}; got shape {shape}"
                         + (" (rgb=False: the last axis is taken as X)" if trailing_rgb and not rgb else ""))
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    return Layout(is_stack=spatial == 3, is_rgb=bool(rgb), shape=shape)


def is_plane(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is one 2D image: (Y, X) or (Y, X, 3|4)."""
    return len(shape) == 2 or (len(shape) == 3 and has_colour_axis(shape))
