"""CPU feature reading for the deploy path: what the fast variant's int8 kernels need."""

from __future__ import annotations

import pytest

from espnet_allinone.deploy.cpu import cpu_features, lacks_int8_compute

X86_VNNI = "processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
X86_OLD = "processor\t: 0\nmodel name\t: Old Core\nflags\t\t: fpu sse2 sse4_2 avx\n"
ARM_DOT = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd03\n"


@pytest.mark.parametrize("text, machine, why", [
    (X86_VNNI, "x86_64", None),
    (X86_OLD, "x86_64", "this x86 CPU has no AVX2"),
    (ARM_DOT, "aarch64", None),
    (ARM_PLAIN, "aarch64", "this ARM CPU has no dot-product instructions (asimddp)"),
    (X86_OLD, "riscv64", None),  # cannot tell: fast runs as asked
])
def test_int8_compute_from_cpuinfo(tmp_path, text, machine, why):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert lacks_int8_compute(str(info), machine) == why


def test_feature_line_names_what_the_cpu_has_and_lacks(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(X86_VNNI)
    line = cpu_features(str(info), "x86_64")
    assert line.startswith("Test Xeon, ")
    assert line.endswith("int8 features: AVX2, AVX-512F, AVX-512 VNNI "
                         "(no AVX-VNNI, AMX, AMX-INT8)")
    assert cpu_features(str(tmp_path / "none"), "x86_64") == \
        f"CPU features unknown (no {tmp_path / 'none'})"
    assert lacks_int8_compute(str(tmp_path / "none"), "x86_64") is None
