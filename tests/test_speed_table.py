"""benchmarks/speed_table.py: the table built from canned section figures (what each benchmark returns), without
measuring anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed_table as st

UNET = st.UNET


def _predict(auto: str = "bf16", auto_ms: float = 30.0, unet: float = 3000.0) -> dict:
    return {"auto": auto, "what": "em model", "validated": ["fp32", "bf16", "int8"],
            "ms": {f"predict, auto ({auto})": auto_ms, "predict, fp32": 54.0, "network alone, fp32 (torch)": 50.0,
                   "predict, bf16": 31.0, "predict, int8": 40.0, "network alone, int8 (onnxruntime)": 39.0,
                   UNET: unet}}


CANNED = {
    "predict": _predict(),
    "training": {"engine": {"steps_per_s": 1.0, "omp_wait_policy": "ACTIVE"},
                 "active": {"steps_per_s": 1.2, "omp_wait_policy": "ACTIVE"}},
    "startup": {"cases": {"help": {"median": 0.1}, "segment": {"median": 1.9}, "torch": {"median": 1.6}}},
    "stack": {"rows": [{"precision": "auto", "ran": "bf16", "slices": 100, "wall": 5.0, "run": 4.0,
                        "end_to_end_per_s": 20.0, "run_per_s": 25.0, "outside": 0.2}]},
    "big": {"runs": [{"size": 2048, "precision": "bf16", "seconds": 4.194304, "rss_mb": 800.0},
                     {"size": 4096, "precision": "bf16", "seconds": 16.777216 * 1.1, "rss_mb": 1000.0},
                     {"size": 12000, "precision": "bf16", "seconds": 144 * 1.3, "rss_mb": 1600.0}]},
    "volume": {"shape": [10, 2048, 2048], "slices": 10, "slices_per_s": 1.0},
}


class _ByStart:
    """The first row whose ``what`` starts with the key."""

    def __init__(self, rows: list[st.Row]) -> None:
        self.rows = rows

    def __getitem__(self, start: str) -> st.Row:
        return next(row for row in self.rows if row.what.startswith(start))


def test_every_row_is_judged_against_the_issue_targets():
    rows = _ByStart(st.table_rows(CANNED))
    assert rows["single 512² `predict`"].measured == "30.0 ms" and rows["single 512² `predict`"].met
    unet = rows["… vs the classic U-Net (same"]
    assert unet.measured.startswith("100.0x") and unet.met
    assert rows["`predict` wrapper overhead"].measured == "+8%" and rows["`predict` wrapper overhead"].met
    assert rows["training steps/s"].met is None and rows["… vs libgomp ACTIVE"].met is False  # 0.83x < 0.9x
    assert rows["`alnet --help`"].met and rows["`alnet segment` of one 512² image"].met is False
    stack = rows["`alnet segment`, 100"]
    assert stack.measured.startswith("20.0 slices/s") and stack.met
    assert rows["… vs the classic U-Net (its 512² ms above)"].measured == "60x"
    big = rows["plane over the whole-plane limit"]
    assert "4096² 1.10x" in big.measured and "12000² 1.30x" in big.measured and big.met is False
    rss = rows["peak RSS"]
    assert rss.measured == "2048² 0.78 GB, 4096² 0.98 GB, 12000² 1.56 GB" and rss.met is False
    volume = rows["OME-Zarr volume"]
    assert volume.measured.startswith("238 ms/MP") and volume.met


def test_int8_is_met_only_where_auto_is_the_fastest_validated_choice():
    assert st.int8_row(_predict(auto_ms=30.0)).met
    slow_auto = _predict(auto="fp32", auto_ms=54.0)
    assert not st.int8_row(slow_auto).met
    no_int8 = _predict()
    del no_int8["ms"]["predict, int8"]
    assert not st.int8_row(no_int8).met


def test_a_failed_section_is_one_row_and_the_others_still_print():
    rows = st.table_rows({"predict": {"error": "RuntimeError: boom"}, "stack": CANNED["stack"]})
    assert rows[0] == st.Row("predict: failed", "RuntimeError: boom", "—", False)
    assert [r.what for r in rows[1:]] == ["`alnet segment`, 100 x 512² TIFF stack, end to end (auto: bf16)"]


def test_the_markdown_table_and_the_json_of_a_benchmark():
    text = st.markdown([st.Row("a", "1 ms", "≤ 2 ms", True), st.Row("b", "3", "—")], ["# head"], {"predict": 1.25})
    assert "| what | measured | target | met? |" in text and "| a | 1 ms | ≤ 2 ms | yes |" in text
    assert "| b | 3 | — | — |" in text and text.endswith("predict 1.2\n")
    footer = st.markdown([], [], {}, own_rss_mb=99.6).splitlines()[-1]
    assert footer == "This process's own peak RSS: 100 MB (a floor of the per-plane peaks above)"
    assert st.last_json("warming up\n" + json.dumps({"x": 1}) + "\n") == {"x": 1}
    with pytest.raises(ValueError, match="no JSON"):
        st.last_json("no figures")


def test_the_table_file_is_written_whole(tmp_path):
    out = tmp_path / "table.md"
    st.write_atomically(out, "| a |\n")
    assert out.read_text() == "| a |\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
