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


def test_an_unknown_kernel_is_one_clear_line():
    done = subprocess.run([sys.executable, kernel_matrix.__file__, "linux-image-none"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "linux-image-none is neither `running`, a kernel image file nor an installed " \
           "package" in done.stderr, done.stderr
