"""The kernel matrix's own rules: what it runs exists, and any gap fails it.

The matrix itself (`make test-kernels`) boots the kernels; these need no root.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from . import kernel_matrix
from .kernel_matrix import CHECKS, REPO, print_table


def test_every_test_a_check_names_exists():
    for check in CHECKS:
        for test in check.tests:
            path, function = test.split("::")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            assert callable(getattr(module, function, None)), test
        if check.stress:
            assert (REPO / check.stress[0]).is_file(), check.stress


def passing_report(kernel: str) -> dict:
    return {"kernel": kernel,
            "outcomes": {check.name: [f"passed {check.name}"] for check in CHECKS}}


def test_the_table_passes_only_when_every_check_passed_on_every_kernel(capsys):
    assert print_table({"6.1.0-57-amd64": passing_report("6.1.0-57-amd64"),
                        "6.18.44 (running)": passing_report("6.18.44")})
    failed = passing_report("6.12.118")
    failed["outcomes"][CHECKS[2].name].append("FAILED test_owner_of_each_end[client-resets]")
    assert not print_table({"6.12.118": failed})
    assert "FAIL 1/2" in capsys.readouterr().out
    missing = passing_report("6.12.118")
    del missing["outcomes"][CHECKS[-1].name]
    assert not print_table({"6.12.118": missing})
    assert not print_table({"6.12.118": None})  # the guest never reported
    assert not print_table({"6.12.118": passing_report("6.1.0-57-amd64")})  # booted another
    oopsed = passing_report("6.12.118")
    oopsed["kernel_errors"] = ["[   22.682269] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"]
    assert not print_table({"6.12.118": oopsed})
    assert "6.12.118: kernel: [   22.682269] Oops: int3" in capsys.readouterr().out


def test_kernel_errors_are_found_in_a_console_log():
    console = ("[    2.481410] clocksource: tsc: mask: 0xffffffffffffffff\n"
               "[   22.682269] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
               "tests/test_x.py::test_warning_free PASSED\n"
               "[   30.1] WARNING: CPU: 1 PID: 9 at kernel/bpf/ringbuf.c:1 x\n")
    assert kernel_matrix.kernel_errors(console) == [
        "[   22.682269] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        "[   30.1] WARNING: CPU: 1 PID: 9 at kernel/bpf/ringbuf.c:1 x"]


def test_an_unknown_kernel_is_one_clear_line():
    done = subprocess.run([sys.executable, kernel_matrix.__file__, "linux-image-none"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "linux-image-none is neither `running`, a kernel image file nor an installed " \
           "package" in done.stderr, done.stderr
