"""What the machine can do fast: the CPU's name and its bfloat16 instructions, read, never assumed.

bf16 autocast pays off only where the hardware multiplies bf16 natively. On x86 that is `avx512_bf16`
(Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4 and later: dot products of bf16 pairs into
fp32) and the AMX tiles (`amx_bf16` with `amx_tile`, Sapphire Rapids and later: whole tile
multiplications, several times the fp32 rate). Without them oneDNN still runs bf16 on any CPU with
avx512bw/vl/dq or avx_ne_convert, converting to fp32 for the arithmetic; `torch.ops.mkldnn.
_is_mkldnn_bf16_supported()` says yes there, so it answers "accepted", not "fast", and bf16 can train
slower than fp32 on such a CPU. So the decision rests on the CPU's own flags, as the kernel
reports them in /proc/cpuinfo (a virtual machine's hypervisor may hide some; then they are absent here
too, and rightly so: the guest cannot use them).

Import-light on purpose (no Lightning; torch only inside the functions that need it), so the training
code can ask `has_fast_bf16` before it builds anything.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# x86 `flags` (Linux's names): bf16 dot products in AVX-512, and the AMX tile unit with its bf16 multiply
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
# aarch64 `Features`: the BFloat16 instructions (BFDOT, BFMMLA) in Neon and in SVE
ARM_BF16_FLAGS = ("bf16", "svebf16")
BF16_FLAGS = X86_BF16_FLAGS + ARM_BF16_FLAGS
# the flags that make bf16 compute faster than fp32 on a CPU. aarch64's `bf16` is reported but not
# counted: medclass has not measured a CPU with it, and oneDNN's Arm path may not use it for every op
FAST_CPU_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
# torch.cpu.get_capabilities() (torch >= 2.10) spells some names differently from Linux
TORCH_CAPABILITY_NAMES = {"avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16", "amx_tile": "amx_tile",
                          "bf16": "bf16", "sve_bf16": "svebf16"}


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none (macOS, Windows) or it cannot be read."""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _field(cpuinfo: str, *names: str) -> str | None:
    """The value of the first `name : value` line with one of `names` (every processor repeats them)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU model, e.g. "Intel(R) Xeon(R) Platinum 8480+", from /proc/cpuinfo's `model name`, else
    `platform.processor()` (empty on many Linux builds), else the architecture."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    return _field(text, "model name") or platform.processor() or platform.machine() or "unknown CPU"


def parse_bf16_flags(cpuinfo: str) -> set[str]:
    """The bf16-related names (`BF16_FLAGS`) in a /proc/cpuinfo text's `flags` (x86) or `Features`
    (aarch64) line; whole words only, so `avx512_bf16` never counts as aarch64's `bf16`."""
    words = set((_field(cpuinfo, "flags", "features") or "").split())
    return words & set(BF16_FLAGS)


def torch_bf16_flags() -> set[str]:
    """The same names from torch's own CPU probe (CPUID through the cpuinfo library), where torch has one
    (`torch.cpu.get_capabilities`, recent releases); empty otherwise. A cross-check of /proc/cpuinfo."""
    try:
        import torch

        capabilities: Any = torch.cpu.get_capabilities()
    except (ImportError, AttributeError, RuntimeError):
        return set()
    return {ours for theirs, ours in TORCH_CAPABILITY_NAMES.items() if capabilities.get(theirs) is True}


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16-related CPU flags of this machine (or of the given /proc/cpuinfo text), e.g.
    {"avx512_bf16", "amx_bf16", "amx_tile"} on a Sapphire Rapids Xeon, {"avx512_bf16"} on AMD Zen 4,
    set() on older CPUs. Without a /proc/cpuinfo (macOS, Windows) torch's own probe answers."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    if text.strip():
        return parse_bf16_flags(text)
    return torch_bf16_flags() if cpuinfo is None else set()


def has_fast_bf16(device: Any = "cpu", cpuinfo: str | None = None) -> bool:
    """Whether bf16 (autocast, `trainer.precision=bf16-mixed`) computes faster than fp32 on `device`.

    CUDA: the GPU multiplies bf16 natively (Ampere and later; emulation on older GPUs does not count).
    CPU: `avx512_bf16` or `amx_bf16` is among the CPU's flags (`cpu_bf16_flags`). Anything else
    (other accelerators, a CPU without the flags): False, so the caller keeps fp32.
    """
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no `including_emulation` and answers for native support
            return bool(torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return bool(cpu_bf16_flags(cpuinfo) & FAST_CPU_BF16)
    return False


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels dispatch to ("AVX512", "AVX2", "DEFAULT", ...), or "" if unknown."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return ""


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line for a benchmark's header: model, bf16 flags, whether bf16 is fast, torch's SIMD level."""
    flags = cpu_bf16_flags(cpuinfo)
    capability = cpu_capability()
    return (f"{cpu_name(cpuinfo)}; bf16 flags: {', '.join(sorted(flags)) or 'none'}; fast bf16: "
            f"{'yes' if has_fast_bf16('cpu', cpuinfo) else 'no'}"
            + (f"; torch CPU capability: {capability}" if capability else ""))
