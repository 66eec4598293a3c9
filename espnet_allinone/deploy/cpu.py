"""What this CPU offers onnxruntime's int8 kernels, read from ``/proc/cpuinfo``.

The fast variant's ``MatMulNBits`` (accuracy_level 4) computes in int8 only
where MLAS has an int8 kernel for the CPU: x86 from AVX2 on (AVX-VNNI and
AVX-512 VNNI faster), ARM with the dot-product extension. Elsewhere
onnxruntime quietly falls back to float compute, so asking for ``fast`` would
buy nothing; the deploy path says so and runs the exact variant instead.
"""

from __future__ import annotations

import os
import platform

CPUINFO = "/proc/cpuinfo"
X86_INT8_FLAGS = (("avx2", "AVX2"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512F"),
                  ("avx512_vnni", "AVX-512 VNNI"), ("amx_tile", "AMX"), ("amx_int8", "AMX-INT8"))
ARM_INT8_FLAGS = (("asimddp", "dot product"), ("i8mm", "int8 matrix multiply"))


def read_cpuinfo(path: str = CPUINFO) -> tuple[str, set[str]] | None:
    """(model name, feature flags) of the first CPU, or None where there is no cpuinfo."""
    name, flags = "unknown CPU", set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "CPU part") and name == "unknown CPU":
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        return None
    return name, flags


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")


def _is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i686", "i386", "x86")


def cpu_features(path: str = CPUINFO, machine: str | None = None) -> str:
    """One line: the CPU's model name and the int8-relevant features it has and lacks."""
    info = read_cpuinfo(path)
    if info is None:
        return f"CPU features unknown (no {path})"
    name, flags = info
    table = ARM_INT8_FLAGS if _is_arm(machine or platform.machine()) else X86_INT8_FLAGS
    have = [label for flag, label in table if flag in flags]
    missing = [label for flag, label in table if flag not in flags]
    return (f"{name}, {os.cpu_count()} logical CPUs; int8 features: "
            f"{', '.join(have) or 'none'}" + (f" (no {', '.join(missing)})" if missing else ""))


def lacks_int8_compute(path: str = CPUINFO, machine: str | None = None) -> str | None:
    """Why this CPU has no int8 kernel for MatMulNBits' accuracy_level 4, or None when it
    has one (or when that cannot be told: then the fast variant runs as asked)."""
    info = read_cpuinfo(path)
    if info is None:
        return None
    _, flags = info
    machine = machine or platform.machine()
    if _is_arm(machine) and "asimddp" not in flags:
        return "this ARM CPU has no dot-product instructions (asimddp)"
    if _is_x86(machine) and "avx2" not in flags:
        return "this x86 CPU has no AVX2"
    return None
