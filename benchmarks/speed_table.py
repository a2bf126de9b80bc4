"""Issue 27's whole table on the machine at hand, measured by the benchmarks that own each row, printed as one
Markdown table: what | measured | target | met?

    python benchmarks/speed_table.py [--quick] [--rows predict training startup stack big volume] [--out FILE.md]

Sections (``--rows``), in this order, each measured as its own benchmark measures it:

- ``predict``: ``latency.py --predict --json`` (``latency.predict_figures`` in a process of its own:
  ``Segmenter.predict`` of one 512² slice in ``auto``, fp32, bf16, int8 and the networks alone, round-robin with
  the classic U-Net): the 512² latency, the ratio to the U-Net, the wrapper's overhead and the int8 path (``auto``
  = the fastest precision the card validates).
- ``training``: ``training_speed.run_column`` (a fresh process: training steps/s with ``alnet train``'s threads;
  the full run adds libgomp ACTIVE, the issue's regression check), printed beside the inference figures.
- ``startup``: ``startup.py --json`` (fresh processes): ``alnet --help``, ``alnet segment`` of one 512² image and
  ``import torch``.
- ``stack``: ``stack.py --end-to-end --json`` (``stack.end_to_end_runs``): the ``alnet segment`` command on a
  100 x 512² TIFF stack, end to end.
- ``big``: ``big_planes.run_one`` (a fresh process per plane): ms/MP of planes over the whole-plane limit against a
  2048² whole plane, and peak RSS (``--quick``: 3072²; else 4096², 8192², 12000²).
- ``volume``: ``volume.py generate`` and ``volume.py run --json``: an OME-Zarr of 2048² planes, ms/MP.

``--quick``: small sizes and few repeats (a smoke run, minutes on 2 cores; its figures are rough). Generated data
lives in temporary folders only. The header names the CPU (``machine.cpu_name``), torch, what ``auto`` picked and
the load average before and after; each section's load is printed under the table (other work on a shared machine
changes every figure: compare ratios taken in one section), and this process's own peak RSS (the big-plane
processes inherit it as a floor of theirs: ``ru_maxrss`` survives ``exec``; it stays ~0.1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from machine import cpu_name

HERE = Path(__file__).resolve().parent
SECTIONS = ("predict", "training", "startup", "stack", "big", "volume")

#: Issue 27's targets.
PREDICT_MS, PREDICT_UNET_X, OVERHEAD = 35.0, 90.0, 0.10
STACK_PER_S, STACK_UNET_X, STARTUP_S = 20.0, 60.0, 1.5
BIG_RATIO, BIG_RSS_GB = 1.2, 1.5
VOLUME_BEFORE_MS_PER_MP = 486.0
UNET = "classic U-Net, fp32 (torch)"


@dataclass(frozen=True)
class Row:
    """One line of the table; ``met``: ``None`` where the issue sets no target."""

    what: str
    measured: str
    target: str
    met: bool | None = None


# --- measuring (each section as its benchmark measures it) ---------------------------------------------------

def measure_predict(quick: bool) -> dict:
    """``latency.py --predict --json`` (``latency.predict_figures``) in a process of its own: the classic U-Net's
    ~2.5 GB would otherwise be this process's peak RSS, which the big-plane processes started later inherit
    (``ru_maxrss`` survives ``exec``)."""
    return run_json([str(HERE / "latency.py"), "--predict", "--json", "--threads", "2", "--runs",
                     "5" if quick else "15"])


def measure_training(quick: bool) -> dict:
    """Training steps/s in fresh processes: the engine's threads for ``train`` (and libgomp ACTIVE, full run)."""
    import training_speed

    args = argparse.Namespace(steps=4 if quick else 12, predicts=5 if quick else 10, threads=2)
    columns = ("engine",) if quick else ("engine", "active")
    return {policy: training_speed.run_column(policy, "train", args) for policy in columns}


def measure_startup(quick: bool) -> dict:
    """``startup.py --json``: ``--help``, a one-image segment and ``import torch``, fresh processes."""
    return run_json([str(HERE / "startup.py"), "--json", "--repeats", "1" if quick else "5", "--cases", "help",
                     "segment", "torch"])


def measure_stack(quick: bool) -> dict:
    """``stack.py --end-to-end --json`` (``stack.end_to_end_runs``): the ``alnet segment`` command on a 100 x 512²
    uint8 TIFF stack (labels + probabilities), end to end. A process of its own: generating the EM-like slices
    peaks at ~2 GB, which the big-plane processes would inherit."""
    return run_json([str(HERE / "stack.py"), "--end-to-end", "--json", "--depths", "100", "--precisions", "auto",
                     "--repeats", "1" if quick else "3", "--threads", "2"])


def measure_big(quick: bool) -> dict:
    """``big_planes.run_one`` per plane size (auto precision, float32 output, a fresh process each)."""
    import big_planes

    args = argparse.Namespace(model="em", out="float32", threads=2, tile=0)
    sizes = (2048, 3072) if quick else (2048, 4096, 8192, 12000)
    return {"runs": [big_planes.run_one(size, "auto", args) for size in sizes]}


def measure_volume(quick: bool) -> dict:
    """``volume.py generate`` then ``volume.py run --json``: an OME-Zarr of 2048² planes, in process."""
    gb = 4 * 2048 * 2048 / 1e9 if quick else 0.25
    with tempfile.TemporaryDirectory(prefix="alnet-speed-volume-") as tmp:
        source, report = Path(tmp) / "vol.ome.zarr", Path(tmp) / "run.json"
        for command in (["generate", "--gb", str(gb), "--plane", "2048", "--out", str(source)],
                        ["run", str(source), "--dest", str(Path(tmp) / "seg.zarr"), "--minutes",
                         "1.5" if quick else "5", "--model", "em", "--json", str(report)]):
            done = subprocess.run([sys.executable, str(HERE / "volume.py"), *command], capture_output=True,
                                  text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"volume.py {command[0]} failed: {done.stderr[-800:]}")
        return json.loads(report.read_text())


MEASURE: dict[str, Callable[[bool], dict]] = {
    "predict": measure_predict, "training": measure_training, "startup": measure_startup,
    "stack": measure_stack, "big": measure_big, "volume": measure_volume}


def run_json(command: list[str]) -> dict:
    """The JSON object a benchmark run as ``python COMMAND`` prints last; ``RuntimeError`` with its stderr if it
    fails."""
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr[-800:]}")
    return last_json(done.stdout)


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object (a benchmark's ``--json`` output after any other lines)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON object in: {text[-300:]!r}")


# --- the rows, from the sections' figures (no measuring here: tests feed canned figures) ------------------------

def _auto_key(ms: dict[str, float]) -> str:
    return next(key for key in ms if key.startswith("predict, auto"))


def predict_rows(p: dict) -> list[Row]:
    """The 512² latency, the U-Net ratio, the wrapper's overhead and the int8 path."""
    ms, auto = p["ms"], _auto_key(p["ms"])
    ratio = ms[UNET] / ms[auto]
    overhead = ms["predict, fp32"] / ms["network alone, fp32 (torch)"] - 1
    rows = [Row(f"single 512² `predict`, auto ({p['auto']})", f"{ms[auto]:.1f} ms", f"≤ {PREDICT_MS:.0f} ms",
                ms[auto] <= PREDICT_MS),
            Row("… vs the classic U-Net (same round-robin)", f"{ratio:.1f}x (U-Net {ms[UNET]:,.0f} ms)",
                f"≥ {PREDICT_UNET_X:.0f}x", ratio >= PREDICT_UNET_X),
            Row("`predict` wrapper overhead (fp32 predict over its network alone)", f"{overhead:+.0%}",
                f"≤ {OVERHEAD:.0%}", overhead <= OVERHEAD)]
    return [*rows, int8_row(p)]


def int8_row(p: dict) -> Row:
    """int8 runs where the card validates it, and ``auto`` picked the fastest validated precision measured here
    (within 10 %: the same round-robin; auto's own run and its precision's explicit one are the same work)."""
    ms, auto = p["ms"], _auto_key(p["ms"])
    per = {key.split(", ")[1]: value for key, value in ms.items()
           if key.startswith("predict, ") and not key.startswith("predict, auto")}
    per[p["auto"]] = min(per.get(p["auto"], ms[auto]), ms[auto])  # auto's run and its precision's: one figure
    figures = ", ".join(f"{name} {value:.1f} ms" for name, value in sorted(per.items(), key=lambda kv: kv[1]))
    validated = [name for name in p["validated"] if name in per]
    fastest = min(validated, key=per.__getitem__)
    measured = f"{figures}; validated: {'/'.join(p['validated'])}; auto ran {p['auto']}"
    met = "int8" in per and "int8" in p["validated"] and per[p["auto"]] <= 1.1 * per[fastest]
    return Row("int8 path (`--precision int8`), `auto` = the fastest validated", measured,
               "int8 where the card validates it; auto picks the fastest validated", met)


def training_rows(t: dict, p: dict | None) -> list[Row]:
    """Training steps/s beside inference; with ACTIVE measured too, the issue's regression check."""
    engine = t["engine"]["steps_per_s"]
    beside = f" (512² predict {p['ms'][_auto_key(p['ms'])]:.1f} ms)" if p else ""
    rows = [Row(f"training steps/s, `alnet train`'s threads ({t['engine']['omp_wait_policy']})",
                f"{engine:.2f}{beside}", "printed beside inference")]
    if "active" in t:
        active = t["active"]["steps_per_s"]
        rows.append(Row("… vs libgomp ACTIVE (the wave-2 regression: 0.50 vs 1.13)", f"{engine / active:.2f}x "
                        f"({active:.2f} steps/s)", "≥ 0.9x", engine >= 0.9 * active))
    return rows


def startup_rows(s: dict) -> list[Row]:
    """``--help`` and a one-image segment against 1.5 s, ``import torch`` beside."""
    cases = s["cases"]
    torch_s = cases["torch"]["median"]
    return [Row("`alnet --help`", f"{cases['help']['median']:.2f} s", f"≤ {STARTUP_S} s",
                cases["help"]["median"] <= STARTUP_S),
            Row("`alnet segment` of one 512² image (fresh process)",
                f"{cases['segment']['median']:.2f} s (`import torch` alone {torch_s:.2f} s)", f"≤ {STARTUP_S} s",
                cases["segment"]["median"] <= STARTUP_S)]


def stack_rows(st: dict, p: dict | None) -> list[Row]:
    """End-to-end slices/s of the 100-slice stack, and against the U-Net's time per 512² slice."""
    r = next(row for row in st["rows"] if row["precision"] == "auto")
    rows = [Row(f"`alnet segment`, {r['slices']} x 512² TIFF stack, end to end (auto: {r['ran']})",
                f"{r['end_to_end_per_s']:.1f} slices/s (the run alone {r['run_per_s']:.1f}; outside it "
                f"{r['outside']:.0%})", f"≥ {STACK_PER_S:.0f} slices/s", r["end_to_end_per_s"] >= STACK_PER_S)]
    if p:
        ratio = p["ms"][UNET] / 1000 * r["end_to_end_per_s"]
        rows.append(Row("… vs the classic U-Net (its 512² ms above)", f"{ratio:.0f}x", f"≥ {STACK_UNET_X:.0f}x",
                        ratio >= STACK_UNET_X))
    return rows


def big_rows(b: dict) -> list[Row]:
    """The worst tiled plane's ms/MP over the 2048² whole plane's, and the largest peak RSS."""
    per_mp = {r["size"]: r["seconds"] * 1e9 / r["size"] ** 2 for r in b["runs"]}
    whole = per_mp[2048]
    tiled = {size: value / whole for size, value in per_mp.items() if size > 2048}
    worst = max(tiled, key=tiled.__getitem__)
    ratios = ", ".join(f"{size}² {ratio:.2f}x" for size, ratio in tiled.items())
    rss = {r["size"]: r["rss_mb"] / 1024 for r in b["runs"]}
    top = max(rss.values())
    precision = b["runs"][0]["precision"]
    return [Row(f"plane over the whole-plane limit, ms/MP vs 2048² whole (auto: {precision}; fresh processes)",
                f"{ratios} ({whole:,.0f} ms/MP whole)", f"≤ {BIG_RATIO}x", tiled[worst] <= BIG_RATIO),
            Row("peak RSS per plane (a fresh process each; float32 probabilities returned)",
                ", ".join(f"{size}² {gb:.2f} GB" for size, gb in rss.items()), f"≤ {BIG_RSS_GB} GB at any size",
                top <= BIG_RSS_GB)]


def volume_rows(v: dict) -> list[Row]:
    """ms/MP of the OME-Zarr path against half of the issue's 486 ms/MP."""
    plane_mp = v["shape"][1] * v["shape"][2] / 1e6
    ms_per_mp = 1000 / (v["slices_per_s"] * plane_mp) if v["slices_per_s"] else float("inf")
    target = VOLUME_BEFORE_MS_PER_MP / 2
    return [Row(f"OME-Zarr volume, {v['shape'][1]}² planes ({v['slices']:.0f} slices, in process)",
                f"{ms_per_mp:,.0f} ms/MP ({v['slices_per_s']:.2f} slices/s)",
                f"≤ {target:.0f} ms/MP (2x faster than 486)", ms_per_mp <= target)]


def table_rows(results: dict[str, dict]) -> list[Row]:
    """Every row the measured sections give, in the issue's order; a failed section is one row saying so."""
    p = results.get("predict")
    p = p if p and "error" not in p else None
    build = {"predict": lambda r: predict_rows(r), "training": lambda r: training_rows(r, p),
             "startup": startup_rows, "stack": lambda r: stack_rows(r, p), "big": big_rows, "volume": volume_rows}
    rows: list[Row] = []
    for section in SECTIONS:
        if section not in results:
            continue
        found = results[section]
        rows += [Row(f"{section}: failed", found["error"], "—", False)] if "error" in found else build[section](found)
    return rows


def markdown(rows: list[Row], header: list[str], loads: dict[str, float], own_rss_mb: float | None = None) -> str:
    """The header lines, the table, each section's load average and this process's peak RSS (which the big-plane
    processes' peaks include: ``ru_maxrss`` survives ``exec``)."""
    mark = {True: "yes", False: "**no**", None: "—"}
    lines = [*header, "", "| what | measured | target | met? |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.what} | {r.measured} | {r.target} | {mark[r.met]} |" for r in rows]
    if loads:
        lines += ["", "Load average (1 min) at the start of each section: "
                  + ", ".join(f"{name} {value:.1f}" for name, value in loads.items())]
    if own_rss_mb is not None:
        lines += ["", f"This process's own peak RSS: {own_rss_mb:.0f} MB (a floor of the per-plane peaks above)"]
    return "\n".join(lines) + "\n"


# --- running --------------------------------------------------------------------------------------------------

def run_sections(sections: list[str], quick: bool) -> tuple[dict[str, dict], dict[str, float]]:
    """Each section's figures (``{"error": ...}`` where it failed) and the load average at its start."""
    results, loads = {}, {}
    for section in SECTIONS:
        if section not in sections:
            continue
        loads[section] = os.getloadavg()[0]
        print(f"[speed_table] {section} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            results[section] = MEASURE[section](quick)
        except (Exception, SystemExit) as exc:  # one failed benchmark must not lose the others' figures
            results[section] = {"error": f"{type(exc).__name__}: {str(exc)[-300:]}".replace("\n", " ")}
        print(f"[speed_table] {section}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results, loads


def header(argv: list[str], results: dict[str, dict], load: tuple[float, float]) -> list[str]:
    """The command, the CPU, torch, what ``auto`` picked and the load average before and after."""
    import importlib.metadata

    p = results.get("predict") or {}
    auto = f"{p['auto']} ({p['what']})" if "auto" in p else "not measured (no predict section)"
    return [f"Issue 27's table, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            f"`{' '.join(['python', 'benchmarks/speed_table.py', *argv])}`",
            "", f"- CPU: {cpu_name()}; torch {importlib.metadata.version('torch')}, 2 threads",
            f"- precision `auto` picked: {auto}",
            f"- load average (1 min): {load[0]:.1f} before, {load[1]:.1f} after"]


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    parser.add_argument("--rows", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to measure")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    results, loads = run_sections(args.rows, args.quick)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = markdown(table_rows(results), header(sys.argv[1:], results, (before, os.getloadavg()[0])), loads, own)
    print(text)
    if args.out:
        write_atomically(args.out, text)


if __name__ == "__main__":
    main()
