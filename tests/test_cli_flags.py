"""Every flag is checked when read (issue 25.5): usage errors exit 2 with a message naming the flag, no traceback,
nothing written; the same checks on the API's entry points; progress lines in a redirected log (issue 24)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_factory import save_test_model, texture
from napari_alnet.cli import build_parser, main
from napari_alnet.engine import arguments
from napari_alnet.engine.batch import segment_files_job
from napari_alnet.engine.progress import run_job

FLAG_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("model") / "m.safetensors", modality="em")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "s.tif"
    tifffile.imwrite(path, (texture((2, 48, 48), 1) * 255).astype(np.uint8), imagej=True, metadata={"axes": "ZYX"})
    return path


def _usage_error(argv: list[str]) -> str:
    """Run ``alnet ARGV`` in this process, in a fresh folder; asserts exit 2 without a traceback and without any
    file written; returns stderr."""
    with tempfile.TemporaryDirectory() as folder:
        before = sorted(Path(folder).rglob("*"))
        argv = [a.replace("{tmp}", folder) for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code
        assert code == 2, (argv, err.getvalue())
        assert "Traceback" not in err.getvalue()
        assert sorted(Path(folder).rglob("*")) == before, f"{argv} wrote files"
    return err.getvalue()


@FLAG_SETTINGS
@given(flag=st.sampled_from(["--tile", "--workers", "--threads", "--watershed-halo"]),
       value=st.integers(max_value=0))
def test_any_count_or_size_at_most_0_is_a_usage_error(stack, flag, value):
    err = _usage_error(["segment", str(stack), "-o", "{tmp}/out", flag, str(value)])
    assert f"argument {flag}: must be at least 1" in err and f"got {value}" in err


@FLAG_SETTINGS
@given(position=st.integers(0, 2), value=st.integers(max_value=0))
def test_any_block_size_at_most_0_is_a_usage_error(stack, position, value):
    block = ["4", "64", "64"]
    block[position] = str(value)
    err = _usage_error(["segment", str(stack), "-o", "{tmp}/out.zarr", "--block", *block])
    assert "argument --block" in err and f"got {value}" in err


@FLAG_SETTINGS
@given(flag=st.sampled_from(["--tile", "--workers", "--threads", "--series", "--block"]),
       text=st.text(min_size=1).filter(lambda t: not re.fullmatch(r"\s*[+-]?[\d_]+\s*", t) and not t.startswith("-")))
def test_a_count_that_is_not_a_whole_number_is_a_usage_error(stack, flag, text):
    extra = [text, "1", "1"] if flag == "--block" else [text]
    err = _usage_error(["segment", str(stack), "-o", "{tmp}/out", flag, *extra])
    assert f"argument {flag}" in err and "expected a whole number" in err


@FLAG_SETTINGS
@given(case=st.one_of(
    st.tuples(st.just("--epochs"), st.integers(max_value=0)),
    st.tuples(st.just("--batch-size"), st.integers(max_value=0)),
    st.tuples(st.just("--crop"), st.integers(max_value=31)),
    st.tuples(st.just("--holdout"), st.integers(max_value=-1)),
    st.tuples(st.just("--steps-per-epoch"), st.integers(max_value=-1)),
    st.tuples(st.just("--max-minutes"), st.floats(max_value=-1e-9) | st.just(float("nan")) | st.just(float("inf"))),
    st.tuples(st.just("--lr"), st.floats(max_value=0.0) | st.just(float("nan"))),
    st.tuples(st.just("--gamma"), st.floats(min_value=1.0, exclude_min=True) | st.floats(max_value=0.0)),
    st.tuples(st.just("--scale"), st.floats(max_value=0.0)),
    st.tuples(st.just("--ema"), st.floats(min_value=1.0) | st.floats(max_value=-1e-9)),
))
def test_training_flags_out_of_range_are_usage_errors(case):
    flag, value = case
    err = _usage_error(["train", "--images", "{tmp}/i", "--masks", "{tmp}/m", "-o", "{tmp}/w.safetensors",
                        f"{flag}={value}"])
    assert f"argument {flag}" in err


def test_zero_means_what_the_help_says():
    args = build_parser().parse_args(["train", "--images", "i", "--masks", "m", "-o", "w.safetensors",
                                      "--max-minutes", "0", "--steps-per-epoch", "0", "--threads", "0",
                                      "--resize", "0", "--holdout", "0"])
    assert (args.max_minutes, args.steps_per_epoch, args.threads, args.resize, args.holdout) == (0, 0, 0, 0, 0)
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for said in ("default 0 = no budget", "default 0 = about one pass", "default 0 = torch's default",
                 "default 0 = off", "default 0 = none"):
        assert said in " ".join(help_text.split()), said


def test_every_flag_has_help():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"alnet {name} {'/'.join(action.option_strings) or action.dest} has no help"


@pytest.mark.parametrize(("given_name", "expected"),
                         [("EM", "em"), ("Fundus", "fundus"), (" dermoscopy", "dermoscopy")])
def test_built_in_model_names_in_any_case(given_name, expected):
    args = build_parser().parse_args(["segment", "x.tif", "-o", "out", "--model", given_name])
    assert args.model == expected


@pytest.mark.parametrize(("given_name", "suggestion"),
                         [("emm", "em"), ("fundas", "fundus"), ("DERMOSCOPE", "dermoscopy")])
def test_a_near_miss_of_a_model_name_gets_did_you_mean(stack, given_name, suggestion):
    err = _usage_error(["segment", str(stack), "-o", "{tmp}/out", "--model", given_name])
    assert f"did you mean {suggestion!r}?" in err and "no built-in model of that name and no such file" in err


def test_an_existing_file_as_the_output_folder_is_refused(stack, tmp_path):
    taken = tmp_path / "taken"
    taken.write_bytes(b"mine")
    with pytest.raises(SystemExit) as stop:
        main(["segment", str(stack), "-o", str(taken), "--device", "cpu"])
    assert stop.value.code == 2 and taken.read_bytes() == b"mine"


def test_unknown_or_absent_devices_are_usage_errors(stack):
    assert "unknown device 'gpu'" in _usage_error(["segment", str(stack), "-o", "{tmp}/out", "--device", "gpu"])
    assert "--device" in _usage_error(["segment", str(stack), "-o", "{tmp}/out", "--device", "cuda:9"])


def test_workers_and_threads_beyond_any_machine_are_refused(stack):
    for flag in ("--workers", "--threads"):
        err = _usage_error(["segment", str(stack), "-o", "{tmp}/out.zarr", flag, str(arguments.MAX_THREADS + 1)])
        assert f"argument {flag}: must be at least 1 and at most {arguments.MAX_THREADS}" in err


@pytest.mark.parametrize(("out", "fmt", "message"), [
    ("m.zip", "onnx", "a onnx export is one .onnx file"),
    ("m.onnx", "torchscript", "a torchscript export is one .pt or .pth file"),
    ("existing.txt", "bioimageio", "is a file; a bioimage.io package is a .zip file or a folder"),
])
def test_export_destinations_that_do_not_suit_the_format(tmp_path, out, fmt, message, capsys):
    (tmp_path / "existing.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        main(["export", "em", "-o", str(tmp_path / out), "--format", fmt])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]


def test_export_into_an_existing_folder_that_is_not_a_package_is_refused(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert main(["export", "em", "-o", str(folder), "--overwrite"]) == 2
    assert "is a folder that is not a bioimage.io package" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_the_api_checks_the_same_way(stack, weights, tmp_path):
    taken = tmp_path / "taken"
    taken.write_bytes(b"mine")
    for options, message in [({"tile": 0}, "tile: must be at least 1"), ({"tile": 100}, "multiple of 32"),
                             ({"tile": 2.5}, "tile: expected a whole number")]:
        with pytest.raises(ValueError, match=message):
            run_job(segment_files_job([stack], tmp_path / "out", str(weights), **options))
    with pytest.raises(arguments.UsageError, match="is a file; give a folder"):
        run_job(segment_files_job([stack], taken, str(weights)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@FLAG_SETTINGS
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text()))
def test_whole_accepts_exactly_the_whole_numbers_in_range(value):
    try:
        got = arguments.whole(value, "--n", minimum=1, maximum=100)
    except arguments.UsageError as exc:
        assert str(exc).startswith("--n: ")
        return
    assert isinstance(got, int) and 1 <= got <= 100 and not isinstance(value, bool)


def test_crop_against_the_images():
    assert arguments.crop(256, [(64, 64)]) == 256  # the default pads small images
    assert arguments.crop(512, [(512, 700)]) == 512
    with pytest.raises(arguments.UsageError, match=r"--crop 2048 is larger than every training image \(the largest "
                       r"is 512 x 700 px\).*give at most 700"):
        arguments.crop(2048, [(512, 700), (64, 64)])


# --- progress in a log ----------------------------------------------------------------------------------------------

class RecordingLog(io.StringIO):
    """A log file (not a terminal) that notes, at each flush, whether the output already exists."""

    def __init__(self, output: Path) -> None:
        super().__init__()
        self.output, self.flushed = output, []

    def flush(self) -> None:
        self.flushed.append((self.getvalue(), self.output.exists()))


def test_progress_lines_reach_the_log_before_the_run_ends(weights, tmp_path, monkeypatch):
    src = tmp_path / "deep.tif"
    tifffile.imwrite(src, (texture((20, 32, 32), 2) * 255).astype(np.uint8), imagej=True, metadata={"axes": "ZYX"})
    log = RecordingLog(tmp_path / "out" / "deep_labels.tif")
    monkeypatch.setattr(sys, "stderr", log)
    assert main(["segment", str(src), "-o", str(tmp_path / "out"), "--model", str(weights), "--device", "cpu"]) == 0
    early = [text for text, finished in log.flushed if not finished]
    assert early, "no line was flushed before the output was written"
    lines = early[-1].splitlines()
    assert len(lines) >= 10  # a line per 5 % of 20 slices (the first, 1/20, and each 5 % after)
    line_format = r"segment \[[#.]{24}\] \d+/20 \d+% [0-9.]+ slices/s( ETA \d+s)? deep\.tif: slice \d+/20"
    assert all(re.fullmatch(line_format, line) for line in lines), lines
    assert sum(" ETA " in line for line in lines) >= len(lines) - 1


def _segment_logged(weights: Path, src: Path, out: Path, *extra: str) -> tuple[str, str]:
    """``alnet segment`` in a child process with stdout and stderr redirected to files, as in a batch job."""
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
        code = subprocess.run([sys.executable, "-m", "napari_alnet.cli", "segment", str(src), "-o", str(out),
                               "--model", str(weights), "--device", "cpu", *extra], stdout=stdout, stderr=stderr,
                              timeout=300).returncode
    assert code == 0, out.with_suffix(".err").read_text()
    return out.with_suffix(".out").read_text(), out.with_suffix(".err").read_text()


@pytest.mark.slow  # a child process: torch's import alone takes seconds
def test_json_progress_lines_in_a_redirected_log_parse(weights, tmp_path):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, (texture((6, 32, 32), 3) * 255).astype(np.uint8), imagej=True, metadata={"axes": "ZYX"})
    out, err = _segment_logged(weights, src, tmp_path / "json", "--progress", "json")
    records = [json.loads(line) for line in err.splitlines()]
    assert records and all({"done", "total", "unit", "rate", "eta_s", "stage"} <= set(r) for r in records)
    assert records[-1]["done"] == records[-1]["total"] == 6 and records[-1]["unit"] == "slices"
    assert records[0]["stage"] == "segment" and out.startswith("segmented 6 slices into 1 files")


def test_quiet_prints_only_the_summary_and_a_rerun_says_what_it_skipped(weights, stack, tmp_path, capsys):
    args = ["segment", str(stack), "-o", str(tmp_path / "out"), "--model", str(weights), "--device", "cpu"]
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("segmented 2 slices into 1 files")
    assert main(args) == 0  # every output exists
    out = capsys.readouterr().out
    assert "slices/s" not in out and "skipped 1 existing outputs (--overwrite replaces them): s_labels.tif" in out


def test_a_volume_run_logs_its_blocks_with_rate_and_eta(weights, tmp_path, monkeypatch, capsys):
    """The OME-Zarr path off a terminal (issue 24: its log stayed empty for the whole run): lines per milestone
    naming the block, with the run's rate and ETA; in JSON the stage and blocks done."""
    zarr = pytest.importorskip("zarr")
    from ome_zarr.writer import write_image

    source = tmp_path / "em.zarr"
    write_image((texture((4, 64, 64), 2) * 255).astype(np.uint8), zarr.open_group(source, mode="w"), axes="zyx",
                scale_factors=[], storage_options={"chunks": (1, 64, 64)})
    args = ["segment", str(source), "--model", str(weights), "--device", "cpu", "--block", "1", "64", "64"]
    assert main([*args, "-o", str(tmp_path / "log")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segment [")]
    assert len(lines) >= 4 and all(" slices/s" in line for line in lines)
    assert any(re.search(r" ETA \d+s .*block \d/4", line) for line in lines), lines
    assert main([*args, "-o", str(tmp_path / "json"), "--progress", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    blocks = [r for r in records if r["stage"] == "blocks"]
    assert blocks and blocks[-1]["blocks_done"] == 4 and blocks[-1]["unit"] == "slices"


def test_the_volume_api_checks_its_arguments_before_writing(weights, tmp_path):
    from napari_alnet.engine.volume import segment_volume_job

    data = (texture((2, 64, 64), 4) * 255).astype(np.uint8)
    dest = tmp_path / "seg.zarr"
    cases = [({"prob_dest": dest, "probabilities": True}, "prob_dest .* is \\(or lies inside, or holds\\) the labels"),
             ({"prob_dest": dest / "prob", "probabilities": True}, "prob_dest"),
             ({"workers": 0}, "workers: must be at least 1"), ({"threads": -2}, "threads: must be at least 1"),
             ({"block": (0, 64, 64)}, "block Z: must be at least 1"), ({"block": (1, 64)}, "expected three sizes"),
             ({"tile": 0}, "tile: must be at least 1"), ({"watershed_halo": 0}, "watershed_halo: must be at least 1")]
    for options, message in cases:
        with pytest.raises(arguments.UsageError, match=message):
            segment_volume_job(str(weights), data, dest, **options)
    assert list(tmp_path.iterdir()) == []
