"""The one rule for what an array's axes mean, used by every reader, the engine, training and the widgets.

After at least two spatial axes, a trailing axis of 1 to 4 entries is channels, with one meaning per count:
1 = gray, 2 = gray + alpha (the alpha is ignored), 3 = RGB, 4 = RGBA (alpha ignored). Any other trailing size is X.
Two spatial axes are (Y, X); three are (Z, Y, X); anything else is refused, naming the shape and what to pass.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Sizes of a trailing axis taken as colour channels.
COLOUR_SIZES = (3, 4)
#: Sizes of a trailing axis taken as a gray channel (gray, gray + alpha): dropped, keeping channel 0.
GRAY_SIZES = (1, 2)
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
    #: A trailing gray (+ alpha) channel axis, dropped by ``canonical``.
    gray_channel: bool = False

    @property
    def spatial(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X): the shape without the channel axis."""
        return self.shape[:-1] if self.is_rgb or self.gray_channel else self.shape

    @property
    def plane(self) -> tuple[int, int]:
        """(Y, X) of one slice."""
        return self.spatial[-2], self.spatial[-1]


def image_layout(shape: tuple[int, ...], rgb: bool | None = None) -> Layout:
    """The layout of an image shape (see the module docstring); ``rgb`` forces whether the last axis is colour:
    ``False`` reads it as X even when it has 1 to 4 entries, ``True`` requires 3 or 4.

    ``ValueError`` (naming the shape and what is accepted) for anything that is not 2D or 3D once the channel axis
    is set aside, and for an empty image.
    """
    shape = tuple(int(s) for s in shape)
    trailing_rgb = has_colour_axis(shape)
    gray = rgb is None and len(shape) >= 3 and shape[-1] in GRAY_SIZES
    if rgb is None:
        rgb = trailing_rgb
    if rgb and not trailing_rgb:
        raise ValueError(f"rgb=True needs a trailing colour axis of 3 or 4; got an image of shape {shape}")
    spatial = len(shape) - int(rgb or gray)
    if spatial not in (2, 3):
        raise ValueError(f"expected an image shaped {SHAPES} (a trailing 1 or 2 is a gray channel); got shape "
                         f"{shape}" + (" (rgb=False: the last axis is taken as X)" if trailing_rgb and not rgb else "")
                         + (": pass one image or one stack at a time" if spatial > 3 else ""))
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    return Layout(is_stack=spatial == 3, is_rgb=bool(rgb), shape=shape, gray_channel=gray)


def canonical(image, rgb: bool | None = None):
    """``(image, layout)`` with a gray channel axis dropped (channel 0 kept, as a view): what the engine runs on."""
    layout = image_layout(image.shape, rgb)
    if not layout.gray_channel:
        return image, layout
    image = image[..., 0]
    return image, image_layout(image.shape, False)  # what is left is spatial: (Z, Y, 3) is a stack, never RGB


def is_plane(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is one 2D image: (Y, X) or (Y, X, 1|2|3|4)."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in GRAY_SIZES + COLOUR_SIZES)
