"""tcplife-exporter: closed TCP sessions as Prometheus histograms, folded in the kernel."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from prometheus_client import CollectorRegistry, ProcessCollector

from .errors import TcplifeError
from .exporter import Exporter, version
from .web import MetricsServer, WebConfig, load_web_config, start_server, url_host

DEFAULT_PORT = 19525  # outside 9100-9999, which Prometheus's exporter port list has filled
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR}
_LEVEL_NAMES = {number: name for name, number in LOG_LEVELS.items()}

log = logging.getLogger("tcplife_exporter")


def listen_address(text: str) -> tuple[str, int]:
    """host:port, [v6]:port or :port (all interfaces), as Prometheus exporters take it."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not host:port, [ipv6]:port or :port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: put an IPv6 address in brackets, [::1]:port")
    return host or "::", int(port)


def telemetry_path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} must start with '/'")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block: the way the other errors look."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from parsing: deploy tests check manifests against it."""
    parser = _Parser(
        prog="tcplife-exporter",
        description="Export lifespans, bytes and counts of closed TCP sessions to Prometheus. "
                    "Sessions are folded into histograms in the kernel by a BPF program on "
                    "the TCP stack's sock_ops callbacks. SIGHUP reloads the config.")
    parser.add_argument("--config.file", dest="config_file", metavar="PATH",
                        help="YAML config (see config.example.yaml); built-in defaults if unset")
    parser.add_argument("--web.listen-address", dest="listen", type=listen_address,
                        default=f":{DEFAULT_PORT}", metavar="ADDRESS",
                        help=f"where to serve metrics (default :{DEFAULT_PORT}, all interfaces)")
    parser.add_argument("--web.telemetry-path", dest="telemetry_path", type=telemetry_path,
                        default="/metrics", metavar="PATH",
                        help="path of the metrics (default /metrics)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="PATH",
                        help="exporter-toolkit web config: TLS and basic auth")
    parser.add_argument("--cgroup.path", dest="cgroup_path", metavar="PATH",
                        help="cgroup v2 directory whose sockets (and those of the cgroups below "
                             "it) are traced; default: the root of the mounted hierarchy")
    parser.add_argument("--log.level", dest="log_level", choices=list(LOG_LEVELS),
                        default="info", help="default info")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


class _LogfmtFormatter(logging.Formatter):
    """level=info msg="..." lines, as Prometheus's own tools log (timestamps: journald's)."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        return f"level={level} msg={json.dumps(record.getMessage(), ensure_ascii=False)}"


class _Signals:
    """What arrived: handled in the main loop, not in the signal handler."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop = False
        self.reload = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stop = True
        self.wake.set()

    def _on_reload(self, _signum: int, _frame: object) -> None:
        self.reload = True
        self.wake.set()


def serve(args: argparse.Namespace, signals: _Signals) -> int:
    web = load_web_config(args.web_config_file)
    exporter = Exporter(args.config_file, args.cgroup_path)
    server: MetricsServer | None = None
    try:
        registry = CollectorRegistry()
        registry.register(exporter)
        ProcessCollector(registry=registry)
        server = start_server(args.listen, registry, args.telemetry_path, web)
        host, port = server.server_address[:2]
        scheme = "https" if web.tls else "http"
        log.info("listening on %s://%s:%d%s", scheme, url_host(host), port, args.telemetry_path)
        while not signals.stop:
            signals.wake.wait()
            signals.wake.clear()
            if signals.reload and not signals.stop:
                signals.reload = False
                _reload(exporter, server, args.web_config_file)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        exporter.close()
    log.info("stopped")
    return 0


def _reload(exporter: Exporter, server: MetricsServer, web_config_file: str | None) -> None:
    """Both files, or neither: a bad web config also fails the reload."""
    web: list[WebConfig] = []
    if exporter.reload(before=lambda: web.append(load_web_config(web_config_file))):
        server.apply(web[0])


def main(argv: Sequence[str] | None = None) -> int:
    signals = _Signals()
    signals.install()  # first, so that a signal during start-up also ends cleanly
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    logging.basicConfig(level=LOG_LEVELS[args.log_level], handlers=[handler])
    logging.getLogger("tcplife_exporter.libbpf").setLevel(
        logging.DEBUG if args.log_level == "debug" else logging.WARNING)
    try:
        return serve(args, signals)
    except TcplifeError as err:
        print(f"tcplife-exporter: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
