"""``engine.request``: one ``SegmentRequest`` for the CLI and the docks — checks, routes, and its jobs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from model_factory import calibrated_model, save_test_model, texture
from napari_alnet.engine import arguments as checks
from napari_alnet.engine.batch import BatchSummary
from napari_alnet.engine.progress import run_job
from napari_alnet.engine.request import (
    BLOCKWISE,
    CURRENT_SLICE,
    IN_MEMORY,
    STREAMING,
    Scope,
    SegmentOutputs,
    SegmentRequest,
    file_request,
    segment_job,
)
from napari_alnet.engine.segmenter import Prediction
from napari_alnet.engine.volume import VolumeSummary


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def _image(shape=(48, 56), seed=0) -> np.ndarray:
    return (texture(shape, seed) * 255).astype(np.uint8)


def _zarr_volume(path: Path, shape: tuple[int, ...], data: np.ndarray | None = None) -> Path:
    array = zarr.create_array(str(path), shape=shape, chunks=(1, *shape[1:]), dtype=np.uint8)
    if data is not None:
        array[...] = data
    return path


# --- construction -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "an image array or input paths"),
    ({"image": np.zeros((4, 4)), "inputs": ("a.tif",)}, "an image array or input paths"),
    ({"image": np.zeros(8)}, "is 1D; AL-Net needs a 2D image"),
    ({"image": np.zeros((4, 4)), "threshold": 1.5}, "threshold: must be greater than 0 and less than 1"),
    ({"image": np.zeros((4, 4)), "tile": 0}, "tile: must be at least 1"),
    ({"image": np.zeros((4, 4)), "precision": "fp8"}, "precision: must be one of"),
    ({"image": np.zeros((4, 4)), "device": "gpu"}, "unknown device 'gpu'"),
    ({"image": np.zeros((3, 4, 4)), "scope": Scope(CURRENT_SLICE, (1, slice(None)))}, "a region of 2 axes"),
])
def test_a_request_that_cannot_run_is_refused_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentRequest("em", **kwargs)


def test_outputs_and_scope_are_checked_when_made():
    with pytest.raises(checks.UsageError, match="instances: must be 2d, 3d or none"):
        SegmentOutputs(instances="4d")
    with pytest.raises(ValueError, match="--watershed splits instances"):
        SegmentOutputs(watershed=True)
    with pytest.raises(checks.UsageError, match="scope: must be one of"):
        Scope("everything")
    with pytest.raises(checks.UsageError, match="integers and slices"):
        Scope(region=(0.5, slice(None)))
    with pytest.raises(checks.UsageError, match="model: give a built-in name"):
        SegmentRequest(42, image=np.zeros((4, 4)))
    request = SegmentRequest("em", image=np.zeros((4, 4)), outputs=SegmentOutputs(out="x.zarr"))
    assert isinstance(request.outputs.out, Path) and request.outputs.to_zarr
    with pytest.raises(AttributeError):
        request.threshold = 0.3  # frozen


# --- routes -------------------------------------------------------------------------------------------------------

def test_routes_of_arrays_a_plane_a_stack_and_a_big_zarr_volume(tmp_path):
    assert SegmentRequest("em", image=_image()).route == IN_MEMORY
    stack = np.zeros((5, 64, 64), np.uint8)
    assert SegmentRequest("em", image=stack).route == IN_MEMORY
    big = zarr.open_array(str(_zarr_volume(tmp_path / "big.zarr", (5, 2048, 2048))), mode="r")  # nothing written
    assert SegmentRequest("em", image=big).route == BLOCKWISE  # the whole array decides, not the region
    assert SegmentRequest("em", image=big, scope=Scope(CURRENT_SLICE, (0, slice(None), slice(None)))).route \
        == BLOCKWISE
    assert SegmentRequest("em", image=np.zeros((5, 64, 64, 3)), rgb=True).route == IN_MEMORY


@pytest.mark.parametrize(("outputs", "route"), [
    (SegmentOutputs(instances="2d"), IN_MEMORY),
    (SegmentOutputs(instances="3d"), BLOCKWISE),
    (SegmentOutputs(instances="2d", watershed=True), BLOCKWISE),  # never on a GUI thread
    (SegmentOutputs(out="chosen.zarr"), BLOCKWISE),
    (SegmentOutputs(out="temporary.zarr", temporary=True), IN_MEMORY),  # a dock's own store decides nothing
])
def test_outputs_that_send_a_small_stack_blockwise(outputs, route):
    assert SegmentRequest("em", image=np.zeros((3, 32, 32)), outputs=outputs).route == route


def test_routes_of_file_lists(tmp_path):
    tiffs = [tmp_path / "a.tif", tmp_path / "b.png"]
    volume = _zarr_volume(tmp_path / "vol.zarr", (2, 32, 32))
    assert file_request(tiffs, tmp_path / "out", "em").route == STREAMING
    assert file_request([volume], tmp_path / "out", "em").route == BLOCKWISE
    assert file_request([tiffs[0]], tmp_path / "o.zarr", "em").route == BLOCKWISE
    assert file_request([tiffs[0]], tmp_path / "out", "em", instances="3d").route == BLOCKWISE
    assert file_request([volume], tmp_path / "out", "em", allow_blockwise=False).route == STREAMING  # Batch dock
    mixed = file_request([tiffs[0], volume], tmp_path / "out", "em", block=(1, 32, 32), watershed_halo=8,
                         instances="2d", watershed=True)
    with pytest.raises(ValueError, match="take different routes"):
        _ = mixed.route
    parts = mixed.parts()
    assert [p.route for p in parts] == [BLOCKWISE, STREAMING]
    assert parts[0].inputs == (str(volume),) and parts[0].block == (1, 32, 32)
    assert parts[1].inputs == (str(tiffs[0]),) and parts[1].block is None and parts[1].outputs.watershed_halo is None


@pytest.mark.parametrize(("inputs", "settings", "message"), [
    (["a.tif", "b.tif"], {"out": "o.zarr"}, "names one OME-Zarr output"),
    (["a.tif"], {"block": (1, 64, 64)}, "apply to OME-Zarr outputs"),
    (["a.tif"], {"watershed_halo": 8, "instances": "2d", "watershed": True}, "--watershed-halo applies to OME-Zarr"),
    (["a.tif"], {"out": "o.zarr", "axes": "ZYX"}, "--axes and --series apply to TIFF inputs"),
    (["a.tif"], {"out": "o.zarr", "workers": 2, "scheduler": "tcp://x:1"}, "give one"),
    (["a.tif"], {"out": "o.zarr", "block": (0, 64, 64)}, "--block Z: must be at least 1"),
])
def test_file_requests_refused_as_the_command_line_refuses_them(tmp_path, inputs, settings, message):
    out = tmp_path / settings.pop("out", "out")
    with pytest.raises(ValueError, match=message):
        file_request([tmp_path / i for i in inputs], out, "em", **settings)


def test_a_tiff_request_never_loads_the_volume_engine(tmp_path):
    code = ("import sys; from napari_alnet.engine.request import file_request; "
            f"r = file_request([{str(tmp_path / 'a.tif')!r}], {str(tmp_path / 'out')!r}, 'em', instances='2d'); "
            "assert r.route == 'streaming stack'; print(sorted({'zarr', 'dask'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]"


# --- jobs end to end ----------------------------------------------------------------------------------------------

def test_in_memory_job_predicts_the_region(model):
    stack = np.stack([_image(seed=s) for s in range(4)])
    request = SegmentRequest(model, image=stack, scope=Scope("z-range", (slice(1, 3), slice(None), slice(None))))
    prediction = run_job(request.job())
    assert isinstance(prediction, Prediction)
    np.testing.assert_allclose(prediction.probabilities, model.predict(stack[1:3]), atol=1e-6)
    with pytest.raises(ValueError, match="layer 'flat' is constant"):
        segment_job(SegmentRequest(model, image=np.full((32, 32), 7, np.uint8), name="layer 'flat'"))


def test_the_package_exports_the_request_and_its_job(model):
    import napari_alnet

    image = _image(seed=5)
    request = napari_alnet.SegmentRequest(model, image=image)
    prediction = napari_alnet.run_job(napari_alnet.segment_job(request))
    assert isinstance(prediction, napari_alnet.Prediction)
    np.testing.assert_allclose(prediction.probabilities, model.predict(image), atol=1e-6)
    assert {"SegmentOutputs", "Progress", "StopRequested"} <= set(napari_alnet.__all__)


def test_streaming_job_writes_the_labels_of_the_in_memory_prediction(tmp_path, model):
    stack = np.stack([_image(seed=s) for s in range(4)])
    tifffile.imwrite(tmp_path / "em.tif", stack, metadata={"axes": "ZYX"})
    summary = run_job(segment_job(file_request([tmp_path / "em.tif"], tmp_path / "out", model, threshold=0.5)))
    assert isinstance(summary, BatchSummary) and summary.ok and summary.slices == 4
    labels = tifffile.imread(tmp_path / "out" / "em_labels.tif")
    assert np.array_equal(labels, (model.predict(stack) > 0.5).astype(np.uint8))


def test_blockwise_job_of_an_array_and_of_a_zarr_path(tmp_path, model):
    stack = np.stack([_image(seed=s) for s in range(3)])
    expected = (model.predict(stack) > 0.5).astype(np.uint8)
    request = SegmentRequest(model, image=stack, threshold=0.5, outputs=SegmentOutputs(out=tmp_path / "a.zarr"))
    summary = run_job(segment_job(request))
    assert isinstance(summary, VolumeSummary) and summary.complete
    labels = np.asarray(zarr.open_array(str(tmp_path / "a.zarr" / "0"), mode="r"))
    assert labels.shape == stack.shape and np.mean(labels == expected) > 0.999
    volume = _zarr_volume(tmp_path / "in.zarr", stack.shape, stack)
    weights = save_test_model(tmp_path / "m.safetensors")  # a file request loads its model by name
    part = file_request([volume], tmp_path / "b.zarr", weights, device="cpu", threshold=0.5)
    assert run_job(segment_job(part)).complete
    assert np.array_equal(np.asarray(zarr.open_array(str(tmp_path / "b.zarr" / "0"), mode="r")), labels)


def test_one_plane_reaches_the_volume_engine_with_a_z_of_one():
    plane = SegmentRequest("em", image=np.zeros((3, 40, 50)), scope=Scope(CURRENT_SLICE, (1, slice(None),
                                                                                         slice(None))))
    assert plane.region_source().shape == (1, 40, 50)
    colour = SegmentRequest("em", image=np.zeros((40, 50, 3)), rgb=True)
    assert colour.region_source().shape == (1, 40, 50, 3)
