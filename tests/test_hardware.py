"""medclass.utils.hardware reads the CPU's bf16 instructions from /proc/cpuinfo text, never assumes them."""

from __future__ import annotations

import pytest
import torch

from medclass.utils import hardware
from medclass.utils.hardware import BF16_FLAGS, cpu_bf16_flags, cpu_name, has_fast_bf16, parse_bf16_flags

# /proc/cpuinfo excerpts (one processor each) as these CPUs' kernels print them
SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni \
pclmulqdq ssse3 fma cx16 pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand \
hypervisor lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 \
smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl \
xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd ida arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 \
gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear \
serialize amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
bugs		: spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi
"""
# Cascade Lake: AVX-512 and VNNI, but no bf16 instruction (oneDNN would emulate bf16 here)
CASCADE_LAKE = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni \
pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand \
hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid mpx \
avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves ida arat \
pku ospke avx512_vnni
"""
# AMD Zen 4 (a KVM guest): avx512_bf16, no AMX
ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model name	: AMD EPYC
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx \
f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb \
avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr arat avx512vbmi umip \
avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
"""
# AWS Graviton3 (Neoverse V1) and Graviton2 (Neoverse N1): aarch64 has `Features` and no `model name`
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU part	: 0xd40
"""
GRAVITON2 = """processor	: 0
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU part	: 0xd0c
"""


@pytest.mark.parametrize(("text", "flags", "fast"), [
    (SAPPHIRE_RAPIDS, {"avx512_bf16", "amx_bf16", "amx_tile"}, True),
    (CASCADE_LAKE, set(), False),  # AVX-512 alone is not bf16 hardware
    (ZEN4, {"avx512_bf16"}, True),
    (GRAVITON3, {"bf16", "svebf16"}, False),  # reported, not counted as fast: not measured
    (GRAVITON2, set(), False),
    ("", set(), False),
])
def test_bf16_flags_and_fast_bf16_from_cpuinfo_text(text: str, flags: set[str], fast: bool) -> None:
    assert parse_bf16_flags(text) == flags
    assert cpu_bf16_flags(text) == flags
    assert has_fast_bf16("cpu", cpuinfo=text) is fast
    assert has_fast_bf16(torch.device("cpu"), cpuinfo=text) is fast


def test_either_x86_bf16_instruction_is_enough() -> None:
    assert has_fast_bf16("cpu", cpuinfo="flags\t\t: avx512f amx_bf16 amx_tile\n")  # AMX without avx512_bf16
    assert has_fast_bf16("cpu", cpuinfo="flags\t\t: avx512f avx512_bf16\n")
    assert not has_fast_bf16("cpu", cpuinfo="flags\t\t: avx512f avx512bw avx512vl avx512dq amx_tile amx_int8\n")


def test_whole_words_only() -> None:
    """`avx512_bf16` is no aarch64 `bf16`, and a flag's name in another line (`bugs`) does not count."""
    assert parse_bf16_flags("flags\t\t: avx512_bf16\nbugs\t\t: amx_bf16 bf16\n") == {"avx512_bf16"}
    assert parse_bf16_flags("flags\t\t: xavx512_bf16 amx_bf16x\n") == set()


def test_cpu_name() -> None:
    assert cpu_name(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu_name(ZEN4) == "AMD EPYC"
    assert isinstance(cpu_name(GRAVITON3), str) and cpu_name(GRAVITON3)  # no model name: platform's answer


def test_this_machine_answers_within_the_known_flags() -> None:
    flags = cpu_bf16_flags()
    assert flags <= set(BF16_FLAGS)
    assert has_fast_bf16("cpu") == bool(flags & hardware.FAST_CPU_BF16)
    assert cpu_name() and hardware.describe_cpu()


def test_other_devices_are_not_assumed_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert has_fast_bf16("cuda") is False
    assert has_fast_bf16("cuda:0") is False
    assert has_fast_bf16("mps") is False
    assert has_fast_bf16("meta") is False


@pytest.mark.parametrize(("cpuinfo", "expected"), [(SAPPHIRE_RAPIDS, "bf16-mixed"), (CASCADE_LAKE, "32-true")])
def test_auto_precision_follows_the_cpu_flags(cpuinfo: str, expected: str) -> None:
    """`trainer.precision=auto`: bf16 autocast only where the CPU multiplies bf16 natively; AVX-512 alone stays fp32."""
    from medclass.tasks.build import auto_precision

    assert auto_precision("cpu", cpuinfo)[0] == expected
    assert auto_precision("mps", cpuinfo)[0] == "32-true"  # an accelerator nothing is known about keeps fp32


def test_train_resolves_auto_once_and_eval_scores_in_fp32(tmp_path, caplog) -> None:
    """The composed defaults: train.py's `auto` becomes this machine's choice in a real Trainer, with one log line
    naming the override; eval.py scores in 32-true everywhere, so a report does not depend on the CPU."""
    import logging

    from medclass.tasks.build import auto_precision, build_trainer

    from .conftest import compose_train

    cfg = compose_train(["trainer.accelerator=cpu"], tmp_path)
    assert cfg.trainer.precision == "auto"
    with caplog.at_level(logging.INFO, logger="medclass"):
        trainer = build_trainer(cfg, logger=False)
    assert trainer.precision == auto_precision("cpu")[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert len(lines) == 1 and "trainer.precision=32-true" in lines[0], lines
    scoring = compose_train(["ckpt_path=x.ckpt", "trainer.accelerator=cpu"], tmp_path, config_name="eval")
    assert build_trainer(scoring, logger=False).precision == "32-true"
