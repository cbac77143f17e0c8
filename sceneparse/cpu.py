"""What CPU this is: its model name and the instruction sets that decide int8 and fp32 speed.

Benchmarks print `describe_cpu()` in every table header, so that figures from two machines are
never compared blind; int8 export asks `has_vnni()` to pick ONNX Runtime's weight range (x86
without VNNI multiplies u8 x s8 pairs with VPMADDUBSW, whose int16 sums can saturate unless the
weights keep to 7 bits). Reads /proc/cpuinfo (Linux); elsewhere the flags are unknown (empty).
"""

from __future__ import annotations

import functools
import platform

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC 9R14" (the machine type when unknown)."""
    return _cpuinfo()[0]


def isa_flags() -> dict[str, bool]:
    """Which of ISA_FLAGS this CPU reports (all False when the flags cannot be read)."""
    flags = _cpuinfo()[1]
    return {flag: flag in flags for flag in ISA_FLAGS}


def has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot products without saturation)."""
    flags = isa_flags()
    return flags["avx512_vnni"] or flags["avx_vnni"]


def is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


def describe_cpu(cores: int | None = None) -> str:
    """One line for a table header: model, ISA flags present/absent, and optionally the cores used."""
    flags = isa_flags()
    present = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in flags.items())
    used = f"; {cores} threads" if cores else ""
    return f"CPU: {cpu_model()} ({present}){used}"
