"""Volumes beyond memory and beyond one machine: blockwise segmentation into OME-Zarr, on Dask, resumable.

A volume (``io.volumes.open_volume``: OME-Zarr, Zarr, N5, TIFF, or a NumPy/dask array) is cut into blocks
(``plan_blocks``): whole YX planes, ``bz`` slices each, when a plane fits the whole-image limit (each block then runs
``inference.probability_job``, so results equal in-memory ``predict``); otherwise YX tiles, each run in a window
with ``CONTEXT_MARGIN`` of halo and the pooled context and normalization bounds of its whole slice, computed first
per slice (``halo``). Blocks are multiples of the output chunks, so parallel writers never share a chunk.

Outputs are standalone OME-Zarr images made with ``zarr``/``ome-zarr``: ``STEM_labels.zarr`` (uint8 semantic mask, or
uint32/uint64 instance ids) and, on request, ``STEM_prob.zarr`` (uint8 = round(255 p), or float16). Their
``napari_alnet`` attribute records the settings and, once every block is done, ``complete: true``. While a run is
under way the labels store holds ``alnet_state/``: one uint8 per block (0 pending, 1 computed, 2 relabelled),
written after the block's data, so rerunning the same command recomputes only unfinished blocks; it is removed
when the run completes. An output we did not make, a complete one, or one made with other settings is refused
unless ``overwrite``.

3D (or 2D) instances (``instances3d``): connected components per block into ``alnet_state/local``, merged across
block faces with a union-find over touching ids, then relabelled block by block; ids unique over the volume. With
``watershed``, a split phase first runs a distance-transform watershed of each block in a window with a halo (its
mask read from the neighbours' ``local``) into ``alnet_state/split``, and ids across a face are merged only where
both sides' watersheds agree (``instances3d.face_votes``).

Runs in-process (blocks one after another, torch using the cores), on a ``distributed.LocalCluster`` it starts
(``workers=N``), or on an existing cluster (``scheduler=ADDRESS`` or ``client=``); each block is one task, retried
if its worker dies. ``segment_volume_job`` is a ``Job`` yielding a ``Progress`` per finished block (metrics: phase,
blocks done / total, slices/s, ETA, the block's region) and returning a ``VolumeSummary``.

The modules: ``plan`` (blocks), ``settings`` (what every task computes), ``stores`` (the output stores and their
state), ``records`` (the run record a resume must match), ``tasks`` (what runs on a worker), ``executors`` (where),
``prepare`` (the checks and the outputs), ``phases`` (the passes over the blocks and their progress), ``run`` (the
``Job``), ``routing`` (in memory or blockwise) and ``results`` (estimates, saving and re-thresholding results).
"""

from .executors import choose_workers, place_run, usable_cores
from .plan import Block, BlockPlan, plan_blocks, plan_volume, watershed_block
from .prepare import VolumeRun, VolumeSummary, prepare_volume_run
from .routing import IN_MEMORY_VOXELS, runs_blockwise, volume_routes
from .run import segment_volume, segment_volume_job
from .settings import FP32_TOLERANCE, PROBABILITY_DTYPES, WATERSHED_HALO, Settings
from .stores import COMPUTED, FINAL, PENDING, output_targets, read_state

__all__ = ["COMPUTED", "FINAL", "FP32_TOLERANCE", "IN_MEMORY_VOXELS", "PENDING", "PROBABILITY_DTYPES",
           "WATERSHED_HALO", "Block", "BlockPlan", "Settings", "VolumeRun", "VolumeSummary", "choose_workers",
           "output_targets", "place_run", "plan_blocks", "plan_volume", "prepare_volume_run", "read_state",
           "runs_blockwise", "segment_volume", "segment_volume_job", "usable_cores", "volume_routes",
           "watershed_block"]
