"""The CPU a benchmark ran on, named as figures must be: model, family, cores and the ISA that changes kernels."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: Flags that change which oneDNN kernels run (and whether bf16 is native).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """E.g. 'AMD EPYC (family 26), 2 cores, avx2 avx512f avx512_vnni avx512_bf16' from ``/proc/cpuinfo``."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    family = f" (family {fields['cpu family']})" if "cpu family" in fields else ""
    return f"{fields.get('model name', platform.machine())}{family}, {os.cpu_count()} cores, {isa}"


if __name__ == "__main__":
    print(cpu_name())
