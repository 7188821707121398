"""The HTTP endpoint: pages, paths, TLS, basic auth and start-up errors."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from tcplife_exporter import web
from tcplife_exporter.exposition import OPENMETRICS, TEXT
from tcplife_exporter.protobuf import PROTOBUF

from .helpers.exporting import EXPORTER, PROTOBUF_ACCEPT, ExporterProcess, parse_samples
from .helpers.tracing import REPO


def get(url: str, user: str | None = None, password: str = "",
        context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def run_exporter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPORTER, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.bpf
def test_landing_page_custom_path_and_not_found(tmp_path):
    args = ["--web.telemetry-path", "/custom"]
    with ExporterProcess(args=args, workdir=tmp_path) as exporter:
        base = f"http://127.0.0.1:{exporter.port}"
        status, page = get(base + "/")
        assert status == 200 and 'href="/custom"' in page
        status, body = get(base + "/custom")
        assert status == 200 and "tcplife_exporter_build_info" in body
        assert get(base + "/metrics")[0] == 404
        assert get(base + "/nothing/here")[0] == 404


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=tcplife-test", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def write_web_config(tmp_path, text: str):
    path = tmp_path / "web.yaml"
    path.write_text(text)
    return ["--web.config.file", str(path)]


@pytest.mark.bpf
def test_tls_and_basic_auth(tmp_path, certificate):
    cert, key = certificate
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = write_web_config(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
basic_auth_users:
  alice: {hashed}
""")
    trusting = ssl.create_default_context(cafile=str(cert))
    with ExporterProcess(args=web, workdir=tmp_path) as exporter:
        url = f"https://127.0.0.1:{exporter.port}/metrics"
        status, body = get(url, "alice", "s3cret", context=trusting)
        assert status == 200
        assert any(name == "tcplife_exporter_build_info" for name, _ in parse_samples(body))
        assert get(url, "alice", "wrong", context=trusting)[0] == 401
        assert get(url, "mallory", "s3cret", context=trusting)[0] == 401
        assert get(url, context=trusting)[0] == 401
        assert get(f"https://127.0.0.1:{exporter.port}/", context=trusting)[0] == 401
        # The handshake really is TLS: an untrusting client refuses the certificate.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(url, "alice", "s3cret", context=ssl.create_default_context())
        # Plain HTTP gets a 400 that says why, as from exporter-toolkit.
        status, body = get(f"http://127.0.0.1:{exporter.port}/metrics", "alice", "s3cret")
        assert status == 400 and "HTTP request to an HTTPS server" in body
        # After all that, it still serves.
        assert get(url, "alice", "s3cret", context=trusting)[0] == 200


@pytest.mark.bpf
def test_a_silent_client_does_not_block_scrapes(tmp_path, certificate):
    cert, key = certificate
    web = write_web_config(tmp_path, f"tls_server_config: {{cert_file: {cert}, "
                                     f"key_file: {key}}}\n")
    trusting = ssl.create_default_context(cafile=str(cert))
    with ExporterProcess(args=web, workdir=tmp_path) as exporter:
        silent = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(5)]
        try:
            status, _ = get(f"https://127.0.0.1:{exporter.port}/metrics", context=trusting)
            assert status == 200
        finally:
            for sock in silent:
                sock.close()


@pytest.mark.bpf
def test_port_in_use_is_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_exporter("--web.listen-address", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"tcplife-exporter: cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize(("args", "message"), [
    (["--web.listen-address", "localhost"], "is not host:port"),
    (["--web.listen-address", ":99999"], "is not host:port"),
    (["--web.listen-address", "::1:80"], "put an IPv6 address in brackets"),
    (["--web.telemetry-path", "metrics"], "must start with '/'"),
    (["--log.level", "loud"], "invalid choice: 'loud'"),
])
def test_bad_flags_are_one_line(args, message):
    done = run_exporter(*args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("tls_server_config: {cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem}\n",
     "cannot load /nonexistent/cert.pem"),
    ("tls_server_config: {cert_file: c.pem}\n", "key_file is required for TLS"),
    ("basic_auth_users: {alice: plaintext}\n", "basic_auth_users.alice: is not a bcrypt hash"),
    ("basic_auth_user: {}\n", "unknown key; did you mean 'basic_auth_users'?"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: SSL3}\n",
     "tls_server_config.min_version: must be one of"),
    ("http_server_config: {headers: {'Bad Name': x}}\n", "is not a valid HTTP header"),
])
def test_bad_web_configs_are_one_line(tmp_path, text, message):
    done = run_exporter(*write_web_config(tmp_path, text))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "web.yaml" in lines[0], done.stderr


def test_bad_web_config_kinds_that_need_a_certificate(tmp_path, certificate):
    cert, key = certificate
    for auth, message in (
        ("RequireAnyClientCert", "RequireAnyClientCert (unverified client certificates) is not "
                                 "supported"),
        ("RequireAndVerifyClientCert", "client_auth_type RequireAndVerifyClientCert needs "
                                       "client_ca_file"),
    ):
        text = f"tls_server_config: {{cert_file: {cert}, key_file: {key}, " \
               f"client_auth_type: {auth}}}\n"
        done = run_exporter(*write_web_config(tmp_path, text))
        assert done.returncode == 1 and message in done.stderr, done.stderr


@pytest.mark.bpf
def test_client_certificates_are_verified(tmp_path, certificate, tmp_path_factory):
    cert, key = certificate
    client_dir = tmp_path_factory.mktemp("client")
    client_cert, client_key = client_dir / "client.pem", client_dir / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=scraper",
                    "-keyout", str(client_key), "-out", str(client_cert)],
                   check=True, capture_output=True)
    web = write_web_config(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {client_cert}
""")
    with ExporterProcess(args=web, workdir=tmp_path) as exporter:
        url = f"https://127.0.0.1:{exporter.port}/metrics"
        with_cert = ssl.create_default_context(cafile=str(cert))
        with_cert.load_cert_chain(str(client_cert), str(client_key))
        assert get(url, context=with_cert)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            get(url, context=ssl.create_default_context(cafile=str(cert)))


@pytest.mark.bpf
def test_a_client_reset_is_not_a_traceback(tmp_path):
    with ExporterProcess(workdir=tmp_path) as exporter:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        assert get(exporter.url)[0] == 200
        assert exporter.stop() == 0
    assert "Traceback" not in exporter.stderr and "Exception" not in exporter.stderr


@pytest.mark.bpf
def test_ipv6_listen_address_and_version(tmp_path):
    exporter = ExporterProcess(workdir=tmp_path)
    exporter.argv[exporter.argv.index(f"127.0.0.1:{exporter.port}")] = f"[::1]:{exporter.port}"
    with exporter:
        assert get(f"http://[::1]:{exporter.port}/metrics")[0] == 200
        assert f'msg="listening on http://[::1]:{exporter.port}/metrics"' in exporter.stderr
    done = run_exporter("--version")
    assert done.returncode == 0 and done.stdout.startswith("tcplife-exporter ")


@pytest.mark.bpf
@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_during_scrapes_exits_cleanly(tmp_path, attempt):
    """Keep-alive scrapers still running while the exporter shuts down (a race:
    a few attempts)."""
    with ExporterProcess(workdir=tmp_path) as exporter:
        stop = threading.Event()

        def scrape_forever() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
            with contextlib.suppress(OSError, http.client.HTTPException):
                while not stop.is_set():
                    connection.request("GET", "/metrics")
                    connection.getresponse().read()

        scrapers = [threading.Thread(target=scrape_forever) for _ in range(24)]
        for scraper in scrapers:
            scraper.start()
        time.sleep(0.5)
        assert exporter.stop(signal.SIGTERM) == 0, exporter.stderr
        stop.set()
        for scraper in scrapers:
            scraper.join()
    assert "Traceback" not in exporter.stderr


@pytest.mark.bpf
def test_all_interfaces_means_ipv4_too_even_with_bindv6only(tmp_path):
    netns = f"tl-v6only-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        inside = ["ip", "netns", "exec", netns]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*inside, "sysctl", "-qw", "net.ipv6.bindv6only=1"], check=True)
        # ip netns exec mounts a fresh /sys: the cgroup2 hierarchy must be mounted again.
        remount = ["sh", "-c", 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', "sh"]
        exporter = ExporterProcess(workdir=tmp_path, prefix=[*inside, *remount])
        exporter.argv[exporter.argv.index(f"127.0.0.1:{exporter.port}")] = f":{exporter.port}"
        with exporter:
            fetch = (f"import urllib.request as u; print(u.urlopen("
                     f"'http://127.0.0.1:{exporter.port}/metrics', timeout=5).status)")
            done = subprocess.run([*inside, sys.executable, "-c", fetch],
                                  capture_output=True, text=True, timeout=30)
            assert done.stdout.strip() == "200", done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


@pytest.mark.bpf
def test_http_server_config_headers(tmp_path):
    web = write_web_config(tmp_path, "http_server_config:\n  http2: false\n  headers:\n"
                                     "    X-Frame-Options: deny\n")
    with ExporterProcess(args=web, workdir=tmp_path) as exporter, \
            urllib.request.urlopen(exporter.url, timeout=10) as response:
        assert response.headers["X-Frame-Options"] == "deny"


def _get_on(sock: socket.socket, path: str = "/") -> bytes:
    """One request on an open connection; the response's status line and headers."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        head += chunk
    header, _, body = head.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", header).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return header


@pytest.mark.bpf
def test_an_idle_connection_outlives_the_request_timeout(tmp_path):
    """A scraper's connection is kept between scrapes (here idle for longer than
    the 10 s a request may take), so scrapes do not open a TCP session each."""
    with ExporterProcess(workdir=tmp_path) as exporter, \
            socket.create_connection(("127.0.0.1", exporter.port)) as sock:
        assert _get_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(web.CONNECTION_TIMEOUT_S + 1.5)
        assert _get_on(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.bpf
def test_idle_connections_are_bounded(tmp_path):
    """Beyond MAX_IDLE_CONNECTIONS waiting between requests, a connection is
    closed after its response; a new one is served as usual."""
    with ExporterProcess(workdir=tmp_path) as exporter:
        address = ("127.0.0.1", exporter.port)
        kept = []
        try:
            for _ in range(web.MAX_IDLE_CONNECTIONS):
                kept.append(socket.create_connection(address))
                _get_on(kept[-1])
            time.sleep(0.5)  # every one of them is now waiting for its next request
            with socket.create_connection(address) as extra:
                extra.settimeout(5)
                assert _get_on(extra).startswith(b"HTTP/1.1 200")
                assert extra.recv(1) == b""  # closed: no idle slot left
            assert _get_on(kept[0]).startswith(b"HTTP/1.1 200")  # the kept ones still work
        finally:
            for sock in kept:
                sock.close()


# What Prometheus 2.42 sends (scrape/scrape.go, acceptHeader).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize("accept, content_type", [
    (PROMETHEUS_ACCEPT, OPENMETRICS),
    (PROTOBUF_ACCEPT, PROTOBUF),
    ("application/openmetrics-text", OPENMETRICS),
    ("text/plain;version=0.0.4;q=0.5, application/openmetrics-text; version=1.0.0; q=0.9",
     OPENMETRICS),
    ("application/openmetrics-text;version=0.0.1", TEXT),
    ("application/openmetrics-text;version=1.0.0;q=0", TEXT),
    ("application/openmetrics-text;q=x", TEXT),
    ("text/plain;version=0.0.4", TEXT),
    ("*/*", TEXT),
    ("", TEXT),
    # Protobuf only where ranked first, and only the delimited MetricFamily stream.
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=delimited;q=0.5,application/openmetrics-text", OPENMETRICS),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=text", TEXT),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=delimited;q=0", TEXT),
])
def test_each_client_gets_the_format_it_ranks_first(accept, content_type):
    assert web.negotiate(accept) == content_type


def _scrape(url: str, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


@pytest.mark.bpf
def test_the_format_follows_the_accept_header(tmp_path):
    with ExporterProcess(workdir=tmp_path) as exporter:
        content_type, body = _scrape(exporter.url, PROMETHEUS_ACCEPT)
        assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert body.endswith("# EOF\n")
        assert "# TYPE tcplife_exporter_ringbuf_drops counter\n" in body
        content_type, body = _scrape(exporter.url, "")
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in body
        assert "# TYPE tcplife_exporter_ringbuf_drops_total counter\n" in body


class _Broken:
    def collect(self):
        raise ZeroDivisionError("a bug in a collector")


def test_an_unexpected_error_in_a_scrape_answers_500_and_is_logged_once(caplog):
    registry = CollectorRegistry()
    registry.register(_Broken())
    server = web.start_server(("127.0.0.1", 0), registry, "/metrics", web.WebConfig())
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with caplog.at_level("ERROR", logger=web.log.name):
            status, body = get(url)
            assert status == 500 and "internal error" in body
            assert get(url.replace("/metrics", "/"))[0] == 200  # still serving
        failures = [r for r in caplog.records if r.getMessage() == "scrape failed"]
        assert len(failures) == 1 and failures[0].exc_info[0] is ZeroDivisionError
    finally:
        server.shutdown()
        server.server_close()
