"""The HTTP endpoint: landing page, metrics, TLS and basic auth.

``--web.config.file`` takes the Prometheus exporter-toolkit format
(``tls_server_config``, ``basic_auth_users`` with bcrypt hashes). Each
connection gets its own thread with a read timeout, and the TLS handshake
happens in that thread, so a client that connects and sends nothing cannot
hold up other scrapes. Between requests a connection is kept open for far
longer than any usual scrape interval, so that a scraper reuses it instead
of opening a TCP session per scrape (which the exporter would count as a
service of its own); a bounded number of such idle connections are kept.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import html
import logging
import os
import re
import socket
import ssl
import sys
import threading
from base64 import b64decode
from binascii import Error as Base64Error
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bcrypt
from prometheus_client import CollectorRegistry

from .errors import TcplifeError
from .exposition import OPENMETRICS, TEXT, exposition
from .protobuf import PROTOBUF, protobuf_exposition
from .yamlfile import YamlReader, read_text

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 10  # the handshake and each request, once started
# Between requests: Prometheus keeps idle connections for 5 minutes; scrape
# intervals are seconds to a few minutes.
IDLE_TIMEOUT_S = 330
MAX_IDLE_CONNECTIONS = 64  # more are closed after their response
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit modes that accept a client certificate without verifying
# it: Python's ssl module verifies every certificate it asks for.
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}


class WebConfigError(TcplifeError):
    """The web config file is unreadable or invalid."""


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)  # added to every response


@dataclass(frozen=True)
class _ActiveWeb:
    tls: ssl.SSLContext | None
    credentials: _Credentials
    headers: dict[str, str]


def load_web_config(path: str | None) -> WebConfig:
    if path is None:
        return WebConfig()
    reader = YamlReader(path, WebConfigError)
    root = reader.root(read_text(path, "web config file", WebConfigError))
    if root is None:
        return WebConfig()
    entries = reader.mapping(root, ["tls_server_config", "http_server_config",
                                    "basic_auth_users"])
    config = WebConfig()
    base = os.path.dirname(os.path.abspath(path))
    if "tls_server_config" in entries and not reader.is_null(entries["tls_server_config"]):
        config.tls = _tls_context(reader, entries["tls_server_config"], base)
    if "http_server_config" in entries and not reader.is_null(entries["http_server_config"]):
        config.headers = _headers(reader, entries["http_server_config"])
    if "basic_auth_users" in entries and not reader.is_null(entries["basic_auth_users"]):
        for user, node in reader.mapping(entries["basic_auth_users"], None).items():
            hashed = reader.string(node)
            if not _BCRYPT_HASH.match(hashed):
                raise reader.error(node, "is not a bcrypt hash (expected $2b$<cost>$...)")
            config.users[user] = hashed.encode()
    return config


def _headers(reader: YamlReader, node) -> dict[str, str]:
    """http_server_config: `headers` are sent; `http2` is accepted, this server
    speaking HTTP/1.1 only (Prometheus scrapes over HTTP/1.1 as well)."""
    entries = reader.mapping(node, ["headers", "http2"])
    if "http2" in entries:
        reader.boolean(entries["http2"])
    headers: dict[str, str] = {}
    if "headers" in entries and not reader.is_null(entries["headers"]):
        for name, value in reader.mapping(entries["headers"], None).items():
            text = reader.string(value)
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or "\n" in text \
                    or "\r" in text:
                raise reader.error(value, "is not a valid HTTP header")
            headers[name] = text
    return headers


def _tls_context(reader: YamlReader, node, base: str) -> ssl.SSLContext:
    entries = reader.mapping(node, ["cert_file", "key_file", "client_ca_file",
                                    "client_auth_type", "min_version", "max_version"])
    for required in ("cert_file", "key_file"):
        if required not in entries:
            raise reader.error(node, f"{required} is required for TLS")
    paths = {key: os.path.join(base, reader.string(entries[key]))
             for key in ("cert_file", "key_file", "client_ca_file") if key in entries}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for key in ("min_version", "max_version"):
        if key in entries:
            name = reader.string(entries[key])
            if name not in _TLS_VERSIONS:
                raise reader.error(entries[key], f"must be one of {', '.join(_TLS_VERSIONS)}")
            setattr(context, key.replace("_version", "imum_version"), _TLS_VERSIONS[name])
    try:
        context.load_cert_chain(paths["cert_file"], paths["key_file"])
    except (OSError, ssl.SSLError) as err:
        raise reader.error(entries["cert_file"],
                           f"cannot load {paths['cert_file']} with {paths['key_file']}: "
                           f"{getattr(err, 'strerror', None) or err}") from None
    auth = "NoClientCert"
    if "client_auth_type" in entries:
        auth = reader.string(entries["client_auth_type"])
        if auth in _UNVERIFIED_CLIENT_AUTH:
            raise reader.error(entries["client_auth_type"],
                               f"{auth} (unverified client certificates) is not supported; "
                               "use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
        if auth not in _CLIENT_AUTH:
            raise reader.error(entries["client_auth_type"],
                               f"must be one of {', '.join(_CLIENT_AUTH)}")
    context.verify_mode = _CLIENT_AUTH[auth]
    if "client_ca_file" in paths:
        try:
            context.load_verify_locations(paths["client_ca_file"])
        except (OSError, ssl.SSLError) as err:
            raise reader.error(entries["client_ca_file"], f"cannot load: {err}") from None
    elif auth != "NoClientCert":
        raise reader.error(node, f"client_auth_type {auth} needs client_ca_file")
    return context


_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


class _Credentials:
    """Basic-auth checks; bcrypt is slow on purpose, so successes are cached."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = b64decode(header[6:], validate=True).decode().partition(":")
        except (Base64Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None:
            # As slow as a wrong password, so that user names cannot be probed by timing.
            bcrypt.checkpw(password.encode(), _DUMMY_HASH)
            return False
        token = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        with self._lock:
            if any(hmac.compare_digest(token, good) for good in self._good):
                return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            self._good.add(token)
        return True


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 telemetry_path: str, web: WebConfig) -> None:
        self.registry = registry
        self.telemetry_path = telemetry_path
        self.idle_slots = threading.BoundedSemaphore(MAX_IDLE_CONNECTIONS)  # waiting ones
        self.apply(web)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # "::" means every interface, IPv4 included, whatever net.ipv6.bindv6only says.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def apply(self, web: WebConfig) -> None:
        """Use this TLS, auth and header setup from the next request on (one swap)."""
        self.web = _ActiveWeb(web.tls, _Credentials(web.users), dict(web.headers))

    def handle_error(self, request, client_address) -> None:
        """A client that resets or times out is routine; anything else is logged,
        in one line, and the server goes on."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("connection from %s ended: %s", client_address[0], error)
        else:
            log.error("serving %s failed: %r", client_address[0], error)

    def finish_request(self, request, client_address) -> None:
        request.settimeout(CONNECTION_TIMEOUT_S)
        tls = self.web.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        if _plain_http(request):
            with contextlib.suppress(OSError):
                request.sendall(_PLAIN_HTTP_ANSWER)
            return
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.debug("TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


_PLAIN_HTTP_ANSWER = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
                      b"Connection: close\r\n\r\n"
                      b"Client sent an HTTP request to an HTTPS server.\n")


def _plain_http(request: socket.socket) -> bool:
    """A TLS handshake starts with byte 0x16; an HTTP request with a letter."""
    try:
        first = request.recv(1, socket.MSG_PEEK)
    except OSError:
        return False
    return first.isalpha()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"
    # A request line too broken to carry a version still gets a status line back.
    default_request_version = "HTTP/1.0"
    server_version = "tcplife-exporter"
    _answered = 0  # requests answered on this connection

    def handle_one_request(self) -> None:
        if self._answered and not self._wait_for_next_request():
            self.close_connection = True
            return
        super().handle_one_request()
        self._answered += 1

    def _wait_for_next_request(self) -> bool:
        """Keep a connection open between requests, if an idle slot is free."""
        if not self.server.idle_slots.acquire(blocking=False):
            return False
        try:
            self.connection.settimeout(IDLE_TIMEOUT_S)
            return bool(self.rfile.peek(1))  # b"": the client closed
        except OSError:  # the idle timeout, or a reset
            return False
        finally:
            self.server.idle_slots.release()
            self.connection.settimeout(CONNECTION_TIMEOUT_S)

    def do_GET(self) -> None:
        credentials = self.server.web.credentials
        if credentials.required and not credentials.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="tcplife-exporter"'})
            return
        path = self.path.split("?", 1)[0]
        if path == self.server.telemetry_path:
            self._send_metrics()
        elif path == "/":
            self._send(200, _landing_page(self.server.telemetry_path),
                       "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # a body it carried is left unread
        self._send(405, b"Method Not Allowed\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _send_metrics(self) -> None:
        try:
            content_type = negotiate(self.headers.get("Accept", ""))
            if content_type == PROTOBUF:
                body = protobuf_exposition(self.server.registry)
            else:
                body = exposition(self.server.registry, content_type == OPENMETRICS)
        except TcplifeError as err:
            log.error("scrape failed: %s", err)
            self._send(500, f"scrape failed: {err}\n".encode(), "text/plain; charset=utf-8")
            return
        except Exception:  # a bug: the scraper still gets an answer, the log the traceback
            log.exception("scrape failed")
            self._send(500, b"scrape failed: internal error (see the exporter's log)\n",
                       "text/plain; charset=utf-8")
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, content_type, headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.web.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def negotiate(accept: str) -> str:
    """The format to answer an Accept header with: PROTOBUF where the client
    ranks it first (Prometheus with native histograms on), else OPENMETRICS
    1.0.0 where it takes it (Prometheus asks for it first), else TEXT."""
    weights: dict[str, float] = {}
    best = 0.0
    for choice in accept.split(","):
        media_type, *parameters = (part.strip() for part in choice.split(";"))
        settings = dict(p.partition("=")[::2] for p in parameters)
        try:
            weight = float(settings.get("q", "1"))
        except ValueError:
            continue
        best = max(best, weight)
        if media_type == "application/openmetrics-text" \
                and settings.get("version", "1.0.0") == "1.0.0":
            weights[OPENMETRICS] = max(weights.get(OPENMETRICS, 0.0), weight)
        elif media_type == "application/vnd.google.protobuf" \
                and settings.get("proto") == "io.prometheus.client.MetricFamily" \
                and settings.get("encoding") == "delimited":
            weights[PROTOBUF] = max(weights.get(PROTOBUF, 0.0), weight)
    if weights.get(PROTOBUF, 0.0) > 0 and weights[PROTOBUF] == best:
        return PROTOBUF
    return OPENMETRICS if weights.get(OPENMETRICS, 0.0) > 0 else TEXT


def _landing_page(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html>\n<html><head><title>tcplife-exporter</title></head><body>\n"
        "<h1>tcplife-exporter</h1>\n"
        "<p>Lifespans, bytes and counts of closed TCP sessions, folded in the kernel.</p>\n"
        f'<p><a href="{path}">Metrics</a></p>\n</body></html>\n'
    ).encode()


def url_host(host: str) -> str:
    """IPv6 addresses go in brackets in URLs and host:port pairs."""
    return f"[{host}]" if ":" in host else host


def start_server(address: tuple[str, int], registry: CollectorRegistry, telemetry_path: str,
                 web: WebConfig) -> MetricsServer:
    """Bind and serve in a background thread."""
    try:
        server = MetricsServer(address, registry, telemetry_path, web)
    except OSError as err:
        host, port = address
        raise TcplifeError(f"cannot listen on {url_host(host)}:{port}: {err.strerror}") from None
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
