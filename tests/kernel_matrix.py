"""The kernel matrix: a kernel subset of the tests on every kernel we claim.

    make test-kernels       # as root: Debian 12's kernels and the running one
    .venv/bin/python tests/kernel_matrix.py running linux-image-6.12-amd64 /boot/vmlinuz-X

Each argument names a kernel: `running` (its checks run here, directly), an
installed kernel package (a metapackage such as linux-image-amd64 stands for the
image it depends on) or a kernel image file. Every kernel but the running one
boots in QEMU with virtme-ng over this machine's root file system, read-only
(results come back through one writable directory), without KVM: nested KVM
fails on these machines, so the guest is emulated (TCG), about 30 s to boot and
the checks run several times slower than here. Prints a table, check by kernel,
and exits 1 unless every check passed on every kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Check:
    """One row of the table: pytest node ids (a function stands for all its
    parameters) or, for the stress, a command writing its trials as JSON."""

    name: str
    tests: tuple[str, ...] = ()
    stress: tuple[str, ...] = ()


CHECKS = (
    Check("bytes exact: 5 closes x 5 sizes x IPv4/6", (
        "tests/test_accuracy.py::test_exact_bytes",
        "tests/test_accuracy.py::test_ipv4_on_a_dual_stack_socket_is_reported_as_ipv4")),
    Check("durations, every close kind", (
        "tests/test_accuracy.py::test_duration_lies_within_what_both_ends_saw",)),
    Check("owners, every close kind", (
        "tests/test_accuracy.py::test_owner_of_each_end",)),
    Check("cgroups: both ends, moved, removed, filter, label", (
        "tests/test_cgroups.py::test_each_end_carries_its_own_cgroup",
        "tests/test_cgroups.py::test_a_server_reset_by_its_peer_has_no_owner_but_its_cgroup",
        "tests/test_cgroups.py::test_the_cgroup_is_the_one_the_socket_was_created_in",
        "tests/test_cgroups.py::test_a_cgroup_removed_before_the_close_shows_its_id",
        "tests/test_cgroups.py::test_the_cgroup_filter_keeps_a_cgroup_and_those_below_it",
        "tests/test_cgroups.py::test_the_exporter_labels_each_end_with_its_cgroup_as_the_rules_say")),
    Check("births under an earlier tracer", (
        "tests/test_sessions.py::"
        "test_session_opened_under_an_earlier_tcplife_is_reported_without_a_lifespan",)),
    Check("exporter: exact counts, sums, buckets", (
        "tests/test_exporter.py::test_counts_sums_and_buckets_are_exact",
        "tests/test_exporter.py::test_ipv6_sessions_get_their_family",
        "tests/test_exporter.py::test_sessions_open_gauge_and_failed_handshakes")),
    Check("native histograms: index exact, folding exact", (
        "tests/test_native.py::test_kernel_index_is_the_exact_formula",
        "tests/test_native.py::"
        "test_exporter_folds_native_buckets_exactly_and_counts_what_passes_the_window")),
    Check("concurrent churns: none lost, no loss counted", (
        "tests/test_sessions.py::test_concurrent_churns_are_printed_exactly",), stress=(
        "bench/stress.py", "--trials", "4", "--listeners", "4", "--sessions", "250")),
    Check("load and unload: tcplife, exporter", (
        "tests/test_cli.py::test_signals_exit_cleanly_and_unload",
        "tests/test_reload.py::test_stop_signals_detach_and_exit_zero",
        "tests/test_reload.py::test_sigkill_leaves_nothing_attached_and_a_restart_works_at_once")),
)


# --- inside the kernel under test ---------------------------------------------------------

def run_tests(workdir: Path) -> dict[str, list[str]]:
    """Every check's tests in one pytest run: the names of those that passed and
    failed, by check. A skipped test counts as failed: nothing here may skip."""
    junit = workdir / "junit.xml"
    selected = [test for check in CHECKS for test in check.tests]
    subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", *selected], cwd=REPO, check=False)
    check_of = {test.split("::")[1]: check.name for check in CHECKS for test in check.tests}
    outcomes: dict[str, list[str]] = {}
    for case in ET.parse(junit).iter("testcase"):
        function = case.get("name", "").split("[")[0]
        verdicts = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes.setdefault(check_of[function], []).append(
            (f"FAILED ({verdicts[0]}) " if verdicts else "passed ") + case.get("name", ""))
    return outcomes


def run_stress(check: Check, workdir: Path, emulated: bool) -> list[str]:
    trials = workdir / "stress.json"
    # QEMU 7.2's multi-threaded emulation can run kernel text from before a patch: a
    # guest 6.12 oopses when programs attach beside the churn (README, "Supported
    # systems"). Not in the guests, then.
    beside = ["--no-attach"] if emulated else []
    subprocess.run([sys.executable, *check.stress, *beside, "--json", str(trials)], cwd=REPO,
                   check=False)
    if not trials.exists():
        return ["FAILED bench/stress.py (no trials written)"]
    return [f"{'passed' if trial['exact'] else 'FAILED'} trial {trial}"
            for trial in json.loads(trials.read_text())]


def run_checks(report: Path, emulated: bool) -> None:
    """Runs every check on this kernel and writes what happened to ``report``."""
    with tempfile.TemporaryDirectory() as workdir:
        outcomes = run_tests(Path(workdir))
        for check in CHECKS:
            if check.stress:
                outcomes.setdefault(check.name, []).extend(
                    run_stress(check, Path(workdir), emulated))
    report.write_text(json.dumps({"kernel": platform.release(), "outcomes": outcomes}))


# --- on the host -------------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    release: str  # as uname -r will say
    image: Path | None  # None: the running kernel

    @property
    def name(self) -> str:
        return self.release if self.image else f"{self.release} (running)"


def kernel_of(argument: str) -> Kernel:
    if argument == "running":
        return Kernel(platform.release(), None)
    if Path(argument).is_file():
        return Kernel(Path(argument).name.removeprefix("vmlinuz-"), Path(argument))
    shown = subprocess.run(["dpkg-query", "-W", "-f", "${Status}|${Depends}", argument],
                           capture_output=True, text=True)
    if shown.returncode != 0 or not shown.stdout.split("|")[0].endswith(" installed"):
        raise SystemExit(f"kernel_matrix: {argument} is neither `running`, a kernel image "
                         "file nor an installed package (make test-kernels installs them)")
    package = argument
    for dependency in shown.stdout.split("|")[1].split(","):
        name = dependency.split()[0] if dependency.strip() else ""
        if name.startswith("linux-image-"):  # a metapackage: the image it stands for
            package = name
    version = package.removeprefix("linux-image-").removesuffix("-unsigned")
    image = Path(f"/boot/vmlinuz-{version}")
    if not image.is_file():
        raise SystemExit(f"kernel_matrix: {argument} installed no {image}")
    return Kernel(version, image)


def build_bench_tools() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from run import build_churn
    build_churn()


def boot_and_check(kernel: Kernel, results: Path, timeout_s: float) -> dict | None:
    """The kernel's report, or None if it never came (the console log says why)."""
    report = results / f"{kernel.release}.json"
    console = results / f"{kernel.release}.console"
    inner = [sys.executable, str(Path(__file__).resolve()), "--run-checks", str(report)]
    if kernel.image is None:
        command = inner
    else:
        command = ["vng", "--verbose", "--disable-kvm", "--force-9p",
                   "--memory", "2G", "--cpus", "2", "--run", str(kernel.image),
                   "--rwdir", str(results), "--cwd", str(REPO), "--",
                   " ".join([*inner, "--emulated"])]
    # vng runs virtme-run from PATH; the guest's root is read-only: no bytecode caches.
    tools = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", PYTHONDONTWRITEBYTECODE="1")
    with console.open("w") as log:
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                           timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            log.write(f"\nkernel_matrix: stopped after {timeout_s:.0f} s\n")
    if not report.exists():
        return None
    found = json.loads(report.read_text())
    # With --verbose the guest's kernel log is on the console: an oops or a warning
    # fails the kernel even when every check passed.
    found["kernel_errors"] = kernel_errors(console.read_text())
    return found


def kernel_errors(console: str) -> list[str]:
    """The kernel's oopses, bugs, warnings and panics in a guest's console log."""
    return [line.strip() for line in console.splitlines()
            if re.search(r"\] (Oops|BUG|WARNING|Kernel panic)\b", line)]


def cell(outcomes: list[str] | None) -> str:
    if not outcomes:
        return "MISSING"
    failed = sum(o.startswith("FAILED") for o in outcomes)
    return f"ok {len(outcomes)}" if not failed else f"FAIL {failed}/{len(outcomes)}"


def print_table(reports: dict[str, dict | None]) -> bool:
    """The table, then every failure by name; whether all passed."""
    width = max(len(check.name) for check in CHECKS)
    columns = [max(len(name), 9) for name in reports]
    print(f"\n{'check':{width}}  " + "  ".join(f"{name:{w}}" for name, w in
                                              zip(reports, columns)))
    all_passed = True
    for check in CHECKS:
        cells = []
        for report in reports.values():
            text = cell((report or {}).get("outcomes", {}).get(check.name))
            all_passed &= text.startswith("ok")
            cells.append(text)
        print(f"{check.name:{width}}  " + "  ".join(f"{c:{w}}" for c, w in zip(cells, columns)))
    for name, report in reports.items():
        if report is None:
            print(f"\n{name}: no report (see its console log above)")
            continue
        if name.split(" ")[0] != report["kernel"]:
            print(f"\n{name}: booted {report['kernel']} instead")
            all_passed = False
        for line in report.get("kernel_errors", []):
            print(f"{name}: kernel: {line}")
            all_passed = False
        for outcomes in report["outcomes"].values():
            for outcome in outcomes:
                if outcome.startswith("FAILED"):
                    print(f"{name}: {outcome}")
    return all_passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernels", nargs="*", metavar="KERNEL",
                        help="`running`, an installed kernel package, or a kernel image")
    parser.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                        help="per kernel, boot included (default: 900)")
    parser.add_argument("--run-checks", type=Path, metavar="REPORT", help=argparse.SUPPRESS)
    parser.add_argument("--emulated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_checks:
        run_checks(args.run_checks, args.emulated)
        return 0
    if not args.kernels:
        parser.error("name at least one kernel")
    kernels = [kernel_of(argument) for argument in args.kernels]
    tools = Path(sys.executable).parent
    if any(k.image for k in kernels) and not (shutil.which("qemu-system-x86_64")
                                              and (tools / "vng").exists()):
        raise SystemExit("kernel_matrix: QEMU or virtme-ng is missing "
                         "(make test-kernels installs both)")
    build_bench_tools()  # the guests' root file system is read-only
    reports: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory(prefix="kernel-matrix-") as results:
        for kernel in kernels:
            print(f"kernel_matrix: {kernel.name} ...", flush=True)
            report = boot_and_check(kernel, Path(results), args.timeout)
            reports[kernel.name] = report
            if report is None or report.get("kernel_errors") or any(
                    o.startswith("FAILED") for outcomes in report["outcomes"].values()
                    for o in outcomes):
                print((Path(results) / f"{kernel.release}.console").read_text()[-20000:])
    return 0 if print_table(reports) else 1


if __name__ == "__main__":
    sys.exit(main())
