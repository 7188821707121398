"""The container image, built here (make image's script) and run with the DaemonSet's
security context: only the manifest's capabilities, a read-only root, no privilege
escalation, the pod's own network and PID namespaces, the host's cgroup hierarchy
mounted read-only, the runtime's default seccomp profile. Sessions made on the host are
folded exactly."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .helpers.exporting import parse_samples, total
from .helpers.peers import Plan, run_session
from .helpers.tracing import REPO
from .helpers.traffic import free_port

pytestmark = pytest.mark.bpf

DEPLOY = REPO / "deploy" / "kubernetes"
TAG = "localhost/tcplife-exporter:test"
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=str(DEPLOY / "containers.conf"))
# podman's default profile (containers-common), applied when none is given.
RUNTIME_DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")
CAPABILITY_BITS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True,
                          check=check, timeout=120)


@pytest.fixture(scope="module")
def image() -> str:
    built = subprocess.run(["sh", str(DEPLOY / "build-image.sh"), TAG], capture_output=True,
                           text=True, timeout=1200)
    assert built.returncode == 0, built.stdout + built.stderr
    return TAG


def daemonset_container() -> tuple[dict, dict]:
    """(the pod's spec, its exporter container) from daemonset.yaml."""
    pod = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def run_argv(image: str, config_dir: Path, port: int, seccomp: Path | None) -> list[str]:
    """podman run as the DaemonSet runs the container."""
    pod, container = daemonset_container()
    context = container["securityContext"]
    assert not pod["hostNetwork"] and not pod["hostPID"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["capabilities"]["drop"] == ["ALL"] and not context["privileged"]
    argv = ["run", "--detach", "--cap-drop", "ALL",
            "--user", f"{context['runAsUser']}:{context['runAsGroup']}",
            "--publish", f"127.0.0.1:{port}:{container['ports'][0]['containerPort']}"]
    for capability in context["capabilities"]["add"]:
        argv += ["--cap-add", capability]
    if context["readOnlyRootFilesystem"]:
        argv.append("--read-only")
    if not context["allowPrivilegeEscalation"]:
        argv += ["--security-opt", "no-new-privileges"]
    if seccomp is not None:
        argv += ["--security-opt", f"seccomp={seccomp}"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("hostPath", {}).get("path") or str(config_dir)
        argv += ["--volume", f"{source}:{mount['mountPath']}:ro"]
    return [*argv, image, *container["args"]]


def bpf_allowed_with_cap_bpf(profile: dict) -> bool:
    return any("bpf" in rule["names"] and rule["action"] == "SCMP_ACT_ALLOW"
               and set(rule.get("includes", {}).get("caps", [])) <= {"CAP_BPF"}
               for rule in profile["syscalls"])


def allowing_bpf_with_cap_bpf(profile: dict) -> dict:
    """The profile with the one change containerd made to its default (2022): bpf()
    allowed to a holder of CAP_BPF, not only of CAP_SYS_ADMIN."""
    changed = copy.deepcopy(profile)
    for rule in changed["syscalls"]:
        if "bpf" in rule["names"] and rule["action"] != "SCMP_ACT_ALLOW":
            rule["names"].remove("bpf")
    changed["syscalls"].append({"names": ["bpf"], "action": "SCMP_ACT_ALLOW",
                                "includes": {"caps": ["CAP_BPF"]}})
    return changed


class Container:
    def __init__(self, argv: list[str]) -> None:
        self.id = podman(*argv).stdout.strip()

    def logs(self) -> str:
        done = podman("logs", self.id, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return state.stdout.strip() == "true"

    def remove(self) -> None:
        podman("rm", "--force", self.id, check=False)


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return None


def start(argv: list[str], port: int) -> Container:
    """The container, once it answers or has stopped."""
    container = Container(argv)
    deadline = time.monotonic() + 60
    while container.running() and scrape(port) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return container


def config_dir(tmp_path: Path, port: int) -> Path:
    """The ConfigMap's config, with the test's port labelled."""
    configmap = yaml.safe_load((DEPLOY / "configmap.yaml").read_text())
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    config.setdefault("ports", {})["labelled"] = [port]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config"


def test_the_image_under_the_daemonsets_security_context_folds_host_sessions(image, tmp_path):
    default = json.loads(RUNTIME_DEFAULT_PROFILE.read_text())
    session_port, metrics_port = free_port(), free_port()
    configs = config_dir(tmp_path, session_port)
    seccomp = None
    if not bpf_allowed_with_cap_bpf(default):
        # This runtime's default refuses bpf() without CAP_SYS_ADMIN: the exporter says
        # why in one sentence; then the default with containerd's change runs it.
        container = start(run_argv(image, configs, metrics_port, None), metrics_port)
        try:
            assert not container.running()
            assert ("refused to load the BPF program (permission denied): this process has "
                    "the capabilities but runs under a seccomp filter") in container.logs()
        finally:
            container.remove()
        seccomp = tmp_path / "seccomp.json"
        seccomp.write_text(json.dumps(allowing_bpf_with_cap_bpf(default)))

    container = start(run_argv(image, configs, metrics_port, seccomp), metrics_port)
    try:
        assert container.running(), container.logs()
        status = podman("exec", container.id, "cat", "/proc/1/status").stdout
        effective = int(next(line.split()[1] for line in status.splitlines()
                             if line.startswith("CapEff:")), 16)
        _, spec = daemonset_container()
        assert effective == sum(1 << CAPABILITY_BITS[name]
                                for name in spec["securityContext"]["capabilities"]["add"])
        for sends in ((100, 2000), (0, 0), (12345, 1)):
            run_session(Plan(client_sends=sends[0], server_sends=sends[1], port=session_port))
        port = str(session_port)
        deadline = time.monotonic() + 10
        while True:
            samples = parse_samples(scrape(metrics_port) or "")
            count = total(samples, "tcplife_session_duration_seconds_count", port=port)
            if count >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert count == 6  # both ends of three sessions
        payload = 100 + 2000 + 12345 + 1  # what each end sent is what the other received
        assert total(samples, "tcplife_session_sent_bytes_sum", port=port) == payload
        assert total(samples, "tcplife_session_received_bytes_sum", port=port) == payload
    finally:
        logs = container.logs()
        container.remove()
    assert "Traceback" not in logs
