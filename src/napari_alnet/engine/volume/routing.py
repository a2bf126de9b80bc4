""""In memory or blockwise": the one rule the CLI (``volume_routes``) and the Segment dock both use."""

from __future__ import annotations

from pathlib import Path

from ...io.volumes import TIFF_SUFFIXES, is_volume_path

#: Sources of at most this many voxels may run in memory (one network call, a full-size NumPy result: the budget
#: of one engine block, ``plan.BLOCK_VOXELS``); bigger ones go blockwise.
IN_MEMORY_VOXELS = 4 * 2048 * 2048


def runs_blockwise(*, instances: str | None = None, zarr_output: bool = False, volume_source: bool = False,
                   voxels: int | None = None, watershed: bool = False) -> bool:
    """Whether a segmentation goes through the blockwise engine (OME-Zarr stores) rather than in memory or the TIFF
    batch: 3D instances (only the engine makes them), an OME-Zarr output chosen (``zarr_output``), a Zarr/N5
    source (``volume_source``), or more than ``IN_MEMORY_VOXELS`` voxels (``voxels``; ``None``: the caller streams
    its inputs, as the TIFF batch does). ``watershed``: instances split by the watershed count too (for a caller
    that must not run it inline: about 1 s per megapixel, never on a GUI thread)."""
    big = voxels is not None and voxels > IN_MEMORY_VOXELS
    return instances == "3d" or bool(instances and watershed) or zarr_output or volume_source or big


def zarr_output(out: str | Path) -> bool:
    """Whether ``out`` names an OME-Zarr output (ends in .zarr) rather than a folder."""
    return str(out).lower().rstrip("/").endswith(".zarr")


def volume_routes(inputs: list[str], out: str | Path, instances: str | None,
                  volume_options: bool = False) -> tuple[list[str], list[str]]:
    """Which ``alnet segment`` inputs go to the blockwise engine (OME-Zarr out, ``runs_blockwise``) and which to the
    TIFF batch: Zarr/N5 inputs always; every input when ``out`` ends in .zarr (then exactly one) or for 3D
    instances (volumes and TIFF stacks). ``volume_options`` (--block, --workers, ...) without any volume input is
    an error."""
    to_zarr = zarr_output(out)
    if to_zarr and len(inputs) != 1:
        raise ValueError(f"-o {out} names one OME-Zarr output: give one input, or an output folder")
    if runs_blockwise(instances=instances, zarr_output=to_zarr):
        odd = [i for i in inputs if not is_volume_path(i) and not str(i).lower().endswith(TIFF_SUFFIXES)]
        if odd:
            raise ValueError(f"{odd[0]}: OME-Zarr output (-o *.zarr, --instances 3d) takes Zarr/N5 volumes or TIFF "
                             "stacks, one path each (not folders or PNG/JPEG)")
        return list(inputs), []
    volumes = [i for i in inputs if runs_blockwise(instances=instances, volume_source=is_volume_path(i))]
    if volume_options and not volumes:
        raise ValueError("--block, --workers, --scheduler and --threads apply to OME-Zarr outputs: Zarr/N5 inputs, "
                         "-o ending in .zarr, or --instances 3d")
    return volumes, [i for i in inputs if i not in volumes]
