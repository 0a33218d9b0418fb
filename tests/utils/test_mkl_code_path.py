"""MKL's AVX2 code path on AMD CPUs: chosen from /proc/cpuinfo, never over the user's own setting, in effect for
every tool (set on ``import passl_tl``, before MKL's first call)."""
import pytest

from passl_tl.utils.mkl_code_path import VARIABLE, cpu_vendor_and_flags, select_mkl_code_path

from tests.utils.test_quiet_output import run_python

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n\n" \
       "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"


def cpuinfo(tmp_path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    (ZEN3, "5"),
    (ZEN3.replace(" avx2", ""), None),  # an AMD CPU without AVX2 (before Excavator): MKL's choice
    (ZEN3.replace(" fma", ""), None),
    (ZEN3.replace("AuthenticAMD", "GenuineIntel"), None),  # MKL picks Intel's best path itself
    ("", None),
])
def test_the_avx2_path_is_chosen_on_amd_cpus_with_avx2(tmp_path, text, expected):
    environ = {"PATH": "/bin"}
    assert select_mkl_code_path(environ, cpuinfo(tmp_path, text)) == expected
    assert environ == ({"PATH": "/bin", VARIABLE: "5"} if expected else {"PATH": "/bin"})


@pytest.mark.parametrize("own", ["", "4"])
def test_a_value_the_user_set_is_kept(tmp_path, own):
    environ = {VARIABLE: own}
    assert select_mkl_code_path(environ, cpuinfo(tmp_path, ZEN3)) is None
    assert environ == {VARIABLE: own}


def test_no_cpuinfo_file_means_no_change(tmp_path):
    assert cpu_vendor_and_flags(str(tmp_path / "missing")) == (None, frozenset())
    assert select_mkl_code_path({}, str(tmp_path / "missing")) is None


def test_importing_passl_tl_sets_it_for_this_machine():
    vendor, flags = cpu_vendor_and_flags()
    expected = "5" if vendor == "AuthenticAMD" and {"avx2", "fma"} <= flags else None
    run = run_python(f"""
        import os
        os.environ.pop({VARIABLE!r}, None)
        import passl_tl
        print(os.environ.get({VARIABLE!r}))
    """)
    assert (run.returncode, run.stdout) == (0, f"{expected}\n")
