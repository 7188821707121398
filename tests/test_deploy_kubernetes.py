"""deploy/kubernetes: the manifests parse, agree with each other and with the exporter's own
flags and config loader, and the DaemonSet's command line runs here with the pod's privileges.

No cluster and no downloads here: the checks are the project's own parser and loader, a small
hand-written schema of the fields used, and a run of the container's command line under the
pod's capabilities, no_new_privs and a read-only root filesystem.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import signal
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tcplife_exporter import preflight
from tcplife_exporter.config import ExporterConfig, parse_config
from tcplife_exporter.exporter_cli import build_parser

from .helpers.exporting import ExporterProcess, Samples, parse_samples, total, value
from .helpers.peers import Plan, run_session
from .helpers.tracing import REPO, ToolProcess
from .helpers.traffic import free_port

DEPLOY = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
EXPECTED_KINDS = {
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "DaemonSet": "apps/v1",
    "Service": "v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}
# What the pod may add to an empty capability set, and why (see daemonset.yaml).
ALLOWED_CAPABILITIES = {"BPF": preflight.CAP_BPF, "PERFMON": preflight.CAP_PERFMON,
                        "NET_ADMIN": preflight.CAP_NET_ADMIN}
MEASURED_RSS = 42 * 10**6  # bench/README.md: the exporter's RSS under churn
COUNT = "tcplife_session_duration_seconds_count"
PORT_LIMITED = "tcplife_exporter_port_limit_sessions_total"


def manifest_files() -> list[str]:
    return sorted(path.name for path in DEPLOY.glob("*.yaml"))


def load_documents(name: str) -> list:
    with open(DEPLOY / name) as file:
        return list(yaml.safe_load_all(file))


@functools.lru_cache(maxsize=1)
def kustomization() -> dict:
    (doc,) = load_documents(KUSTOMIZATION)
    return doc


@functools.lru_cache(maxsize=1)
def objects() -> dict[str, dict]:
    """Kind -> the one object of that kind, from the files the kustomization lists."""
    found: dict[str, dict] = {}
    for name in kustomization()["resources"]:
        for doc in load_documents(name):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def pod_spec() -> dict:
    return objects()["DaemonSet"]["spec"]["template"]["spec"]


def container() -> dict:
    (only,) = pod_spec()["containers"]
    return only


def parsed_args():
    return build_parser().parse_args(container()["args"])


def volume_of(mount: dict) -> dict:
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    return volume


def config_volume() -> tuple[str, str, str]:
    """(mount path, ConfigMap name, file name in the mount) of the config volume."""
    (mount,) = [m for m in container()["volumeMounts"] if "configMap" in volume_of(m)]
    volume = volume_of(mount)
    (item,) = volume["configMap"]["items"]
    assert item["key"] == item["path"]  # the file is named after its key
    return mount["mountPath"], volume["configMap"]["name"], item["path"]


def host_mounts() -> dict[str, str]:
    """Mount path in the container -> path on the node, of every hostPath volume."""
    return {m["mountPath"]: volume_of(m)["hostPath"]["path"]
            for m in container()["volumeMounts"] if "hostPath" in volume_of(m)}


def config_text() -> str:
    _, _, key = config_volume()
    return objects()["ConfigMap"]["data"][key]


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity (the suffixes used here) as a plain number."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(text))
    assert match and (match[2] == "" or match[2] in units), f"bad quantity {text!r}"
    return float(match[1]) * units.get(match[2], 1)


# --- parsing and listing -------------------------------------------------------------------


def test_every_manifest_parses_and_the_kustomization_lists_it():
    files = manifest_files()
    assert KUSTOMIZATION in files
    for name in files:
        docs = load_documents(name)
        assert docs and all(isinstance(doc, dict) for doc in docs), name
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == [name for name in files if name != KUSTOMIZATION]


def test_kinds_api_versions_names_and_namespace():
    found = objects()
    assert {kind: obj["apiVersion"] for kind, obj in found.items()} == EXPECTED_KINDS
    namespace = kustomization()["namespace"]
    for kind, obj in found.items():
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), kind
        assert obj["metadata"]["namespace"] == namespace, kind
    assert kustomization()["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization()["kind"] == "Kustomization"


# A minimal schema, since kubeconform and kubectl are not installed: the keys each structure
# may have (a subset of the API's, enough for these files), so that a misspelt key, which the
# API server would drop or refuse, fails here.
ALLOWED_KEYS = {
    "object": {"apiVersion", "kind", "metadata", "spec", "data", "automountServiceAccountToken"},
    "metadata": {"name", "namespace", "labels", "annotations"},
    "daemonset": {"selector", "updateStrategy", "template", "minReadySeconds",
                  "revisionHistoryLimit"},
    "pod": {"serviceAccountName", "automountServiceAccountToken", "hostNetwork", "hostPID",
            "hostIPC", "securityContext", "nodeSelector", "tolerations", "containers",
            "volumes", "priorityClassName", "terminationGracePeriodSeconds", "affinity"},
    "container": {"name", "image", "imagePullPolicy", "command", "args", "ports", "env",
                  "readinessProbe", "livenessProbe", "startupProbe", "resources",
                  "securityContext", "volumeMounts"},
    "probe": {"httpGet", "tcpSocket", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
              "failureThreshold", "successThreshold"},
    "container_security": {"privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                           "runAsUser", "runAsGroup", "runAsNonRoot", "capabilities",
                           "seccompProfile"},
    "pod_security": {"seccompProfile", "sysctls", "runAsUser", "runAsGroup", "fsGroup"},
    "service": {"type", "clusterIP", "selector", "ports"},
    "service_port": {"name", "port", "targetPort", "protocol"},
    "servicemonitor": {"selector", "endpoints", "namespaceSelector", "jobLabel"},
    "endpoint": {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"},
}


def keys_of(kind: str, mapping: dict) -> None:
    assert isinstance(mapping, dict), f"{kind}: not a mapping"
    unknown = set(mapping) - ALLOWED_KEYS[kind]
    assert not unknown, f"{kind}: unknown keys {sorted(unknown)}"


def test_minimal_schema():
    for obj in objects().values():
        keys_of("object", obj)
        keys_of("metadata", obj["metadata"])
    keys_of("daemonset", objects()["DaemonSet"]["spec"])
    keys_of("pod", pod_spec())
    keys_of("pod_security", pod_spec()["securityContext"])
    keys_of("container", container())
    keys_of("container_security", container()["securityContext"])
    for probe in ("readinessProbe", "livenessProbe"):
        keys_of("probe", container()[probe])
    keys_of("service", objects()["Service"]["spec"])
    for port in objects()["Service"]["spec"]["ports"]:
        keys_of("service_port", port)
    keys_of("servicemonitor", objects()["ServiceMonitor"]["spec"])
    for endpoint in objects()["ServiceMonitor"]["spec"]["endpoints"]:
        keys_of("endpoint", endpoint)
    assert all(isinstance(v, str) for v in objects()["ConfigMap"]["data"].values())
    assert all(isinstance(arg, str) for arg in container()["command"] + container()["args"])
    assert objects()["DaemonSet"]["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert {"operator": "Exists"} in pod_spec()["tolerations"]  # every node


# --- the objects agree with each other -----------------------------------------------------


@pytest.mark.bpf
def test_the_servicemonitor_names_the_job_the_alerts_watch():
    alerts = (REPO / "deploy/prometheus/rules/tcplife-alerts.yml").read_text()
    watched = set(re.findall(r'job="([^"]+)"', alerts))
    (endpoint,) = objects()["ServiceMonitor"]["spec"]["endpoints"]
    named = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    assert len(watched) == 1 and named == list(watched)


def test_labels_selectors_and_port_names_agree():
    daemonset, service, monitor = (objects()[k] for k in ("DaemonSet", "Service",
                                                          "ServiceMonitor"))
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    selector = daemonset["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    # No namespaceSelector means the monitor's own namespace, the Service's.
    assert "namespaceSelector" not in monitor["spec"]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]

    (container_port,) = container()["ports"]
    (service_port,) = service["spec"]["ports"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert container_port["name"] == service_port["targetPort"] == service_port["name"]
    assert endpoint["port"] == service_port["name"]
    assert service_port["port"] == container_port["containerPort"]
    assert service["spec"]["clusterIP"] == "None"  # one endpoint per pod, no balancing
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["httpGet"]["port"] == container_port["name"]

    assert pod_spec()["serviceAccountName"] == objects()["ServiceAccount"]["metadata"]["name"]
    _, configmap_name, key = config_volume()
    assert configmap_name == objects()["ConfigMap"]["metadata"]["name"]
    assert key in objects()["ConfigMap"]["data"]


# --- the objects agree with the exporter ---------------------------------------------------


@pytest.mark.bpf
def test_command_is_the_exporter_and_the_image_entrypoint():
    # The console script pip installs (pyproject.toml's [project.scripts]).
    scripts = {ep.name: ep.value for ep in metadata.distribution("tcplife-exporter").entry_points
               if ep.group == "console_scripts"}
    assert container()["command"] == ["tcplife-exporter"]
    assert scripts["tcplife-exporter"] == "tcplife_exporter.exporter_cli:main"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.*)$", dockerfile, re.M)
    assert json.loads(entrypoint) == container()["command"]
    assert re.findall(r"^EXPOSE (\d+)$", dockerfile, re.M) == [
        str(container()["ports"][0]["containerPort"])]
    # kustomize's `images` rewrite applies only to a matching image name.
    (image,) = kustomization()["images"]
    assert container()["image"].rpartition(":")[0] == image["name"]


def test_args_parse_with_the_exporters_parser_and_match_the_ports():
    args = parsed_args()
    host, port = args.listen
    assert host == "::"  # every interface of the pod: probes and scrapes use the pod IP
    assert port == container()["ports"][0]["containerPort"]
    assert port == objects()["Service"]["spec"]["ports"][0]["port"]
    assert args.telemetry_path == objects()["ServiceMonitor"]["spec"]["endpoints"][0]["path"]
    mount_path, _, key = config_volume()
    assert args.config_file == f"{mount_path}/{key}"
    assert args.web_config_file is None  # probes expect plain HTTP without auth


def test_a_wrong_flag_in_args_would_fail():
    # The parser check above can fail: a misspelt flag exits like the exporter would.
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*container()["args"], "--web.listen_address=:1"])
    assert exited.value.code == 2


def test_configmap_config_loads_with_the_project_loader():
    config = parse_config(config_text(), "deploy/kubernetes/configmap.yaml")
    assert isinstance(config, ExporterConfig)
    assert config.auto_ports and not config.comm_label  # bounded series by default


def test_security_context_grants_only_what_the_exporter_needs():
    security = container()["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    added = security["capabilities"]["add"]
    assert set(added) <= ALLOWED_CAPABILITIES.keys()
    # Exactly what the exporter's own preflight check asks for.
    mask = sum(1 << ALLOWED_CAPABILITIES[name] for name in added)
    assert preflight.missing_capabilities(mask) == []
    assert security["runAsUser"] == 0  # non-root users get no effective capabilities
    spec = pod_spec()
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host_namespace), host_namespace
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # One node path: the cgroup hierarchy the program attaches to, read-only.
    assert list(host_mounts().values()) == ["/sys/fs/cgroup"]
    assert parsed_args().cgroup_path in host_mounts()
    assert spec["automountServiceAccountToken"] is False
    assert objects()["ServiceAccount"]["automountServiceAccountToken"] is False
    assert all(mount["readOnly"] is True for mount in container()["volumeMounts"])


def test_resources_have_requests_and_limits():
    resources = container()["resources"]
    for kind in ("cpu", "memory"):
        request = quantity(resources["requests"][kind])
        limit = quantity(resources["limits"][kind])
        assert 0 < request <= limit, kind
    assert quantity(resources["limits"]["memory"]) >= 2 * MEASURED_RSS


def test_image_recipe_builds_the_bpf_object_and_runs_slim():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2
    build, runtime = stages
    assert build.startswith("debian:12 AS build")
    for package in ("clang", "libbpf-dev", "make", "python3-dev", "python3-venv"):
        assert re.search(rf"\b{package}\b", build), package
    assert runtime.startswith("debian:12-slim")
    # The runtime gets the wheel make wheel makes, libbpf inside: no libbpf1.
    assert "sh deploy/build-wheel.sh" in build and "auditwheel" in build
    assert re.search(r"\bpython3\b", runtime) and not re.search(r"\blibbpf1\b", runtime)
    assert "clang" not in runtime and "COPY --from=build" in runtime
    # The build stage checks the installed package finds its BPF object.
    module, function = re.search(r"import (tcplife_exporter\.\w+) as \w+; print\(\w+\.(\w+)\(\)",
                                 build).groups()
    assert callable(getattr(importlib.import_module(module), function)), (module, function)
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "tcplife_exporter/bpf/*.o"} <= set(ignored)


# --- the DaemonSet's command line, run here ------------------------------------------------


class PodProcess(ToolProcess):
    ready_text = ExporterProcess.ready_text


def pod_prefix() -> list[str]:
    """Run as the container would: a read-only root (and /sys), no_new_privs, and a
    capability set holding only what the manifest adds. The remount happens in a private
    mount namespace of the test's own, so the host is untouched."""
    security = container()["securityContext"]
    caps = ",".join(f"+{name.lower()}" for name in security["capabilities"]["add"])
    read_only = 'mount -o remount,bind,ro / && mount -o remount,bind,ro /sys && exec "$@"'
    privileges = ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{caps}"]
    if security["allowPrivilegeEscalation"] is False:
        privileges.append("--no-new-privs")
    return ["unshare", "--mount", "sh", "-c", read_only, "sh", *privileges]


def local_args(tmp_path: Path, port: int) -> list[str]:
    """The manifest's args, with the ConfigMap's mount moved to tmp_path, host paths
    to where they are on this host, and the listen address moved to a free IPv4
    loopback port (19525 on all interfaces may be in use)."""
    mount_path, _, key = config_volume()
    (tmp_path / key).write_text(config_text())
    args = []
    for arg in container()["args"]:
        flag, _, given = arg.partition("=")
        if flag == "--web.listen-address":
            arg = f"{flag}=127.0.0.1:{port}"
        elif flag == "--config.file":
            arg = f"{flag}={given.replace(mount_path, str(tmp_path), 1)}"
        elif given in host_mounts():
            arg = f"{flag}={host_mounts()[given]}"
        args.append(arg)
    assert args != container()["args"] and len(args) == len(container()["args"])
    return args


def process_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status)


def root_mount_options(pid: int) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == "/":
                return fields[5].split(",")
    raise AssertionError("no root mount")


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def scrape_until(url: str, done, timeout: float = 10) -> Samples:
    """A scrape for which ``done`` holds, or the last one at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        samples = parse_samples(get(url)[1])
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.bpf
def test_daemonset_command_runs_with_the_pods_privileges(tmp_path):
    port = free_port()
    executable = Path(sys.executable).parent / container()["command"][0]
    assert executable.exists(), f"{executable}: run `make venv`"
    added = container()["securityContext"]["capabilities"]["add"]
    with PodProcess(local_args(tmp_path, port), prefix=pod_prefix(),
                    command=[str(executable)], cwd=tmp_path) as pod:
        # The emulation took effect: otherwise this test would prove nothing.
        status = process_status(pod.proc.pid)
        assert int(status["CapEff"], 16) == sum(1 << ALLOWED_CAPABILITIES[c] for c in added)
        assert status["NoNewPrivs"] == "1"
        assert "ro" in root_mount_options(pod.proc.pid)

        base = f"http://127.0.0.1:{port}"
        for probe in ("readinessProbe", "livenessProbe"):
            status_code, _ = get(base + container()[probe]["httpGet"]["path"])
            assert status_code == 200, probe
        # One IPv4 loopback session: the program traces with only these privileges.
        server_port = free_port()
        run_session(Plan(port=server_port, client_sends=100, server_sends=200))
        out = dict(direction="outbound", port=str(server_port), family="ipv4")
        other = dict(out, port="other")

        def folded(samples: Samples) -> bool:
            # The config's 64 automatic port labels may have gone to other programs'
            # sessions on this host first; then this one is folded under port="other".
            return value(samples, COUNT, **out) == 1 or (
                value(samples, PORT_LIMITED) > 0 and total(samples, COUNT, **other) > 0)

        metrics = base + objects()["ServiceMonitor"]["spec"]["endpoints"][0]["path"]
        samples = scrape_until(metrics, folded)
        assert folded(samples), {k: v for k, v in samples.items() if k[0] in (COUNT, PORT_LIMITED)}
        if value(samples, COUNT, **out) == 1:
            assert value(samples, "tcplife_session_sent_bytes_sum", **out) == 100
            assert value(samples, "tcplife_session_received_bytes_sum", **out) == 200
        assert value(samples, "tcplife_exporter_config_last_reload_successful") == 1
        # kubelet stops a pod with SIGTERM: a clean exit.
        assert pod.stop(signal.SIGTERM) == 0, pod.stderr
