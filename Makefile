# Entry points for a fresh Debian 12 / Ubuntu 24.04 machine, as root:
#   make run      installs what is missing, builds, and starts tcplife-exporter
#                 with config.example.yaml on http://localhost:19525/metrics
#   make tcplife  the same, but prints sessions live (the tcplife command)
#   make test     installs what is missing, builds, and runs the whole test suite
#   make bench    the same setup, then the cost-and-exactness benchmark (bench/)
#   make install  the systemd service: /opt/tcplife-exporter, /etc/tcplife-exporter,
#                 the unit (deploy/install.sh; INSTALL_ARGS for other directories)
#   make uninstall  removes it again, keeping the config
PYTHON ?= python3
VENV ?= .venv
BPF_OBJ := tcplife_exporter/bpf/tcplife.bpf.o
BPF_SRC := bpf/tcplife.bpf.c bpf/tcplife.h bpf/kernel.h
MULTIARCH := $(shell gcc -dumpmachine 2>/dev/null || echo $$(uname -m)-linux-gnu)
# Build: clang llvm libbpf-dev gcc make. Run: libbpf1, python3-venv/pip.
# Tests: iproute2 (netns), bpftool (attached programs), openssl (TLS
# certificates), prometheus (a real server scraping the exporter, promtool),
# systemd (systemd-analyze) and python3-seccomp (the unit's sandbox, emulated).
APT_PACKAGES := clang llvm libbpf-dev libbpf1 gcc make python3-venv python3-pip iproute2 \
	bpftool openssl prometheus systemd python3-seccomp

.PHONY: run tcplife test bench bpf deps venv lint clean install uninstall

run: venv
	$(VENV)/bin/tcplife-exporter --config.file config.example.yaml

tcplife: venv
	$(VENV)/bin/tcplife

test: venv
	$(VENV)/bin/ruff check tcplife_exporter tests bench setup.py
	$(VENV)/bin/pytest -v tests

bench: venv
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	@mkdir -p $(dir $@)
	clang -g -O2 -Wall -Werror -target bpf -I/usr/include/$(MULTIARCH) -Ibpf -c $< -o $@

# System packages: only those not installed yet, so a warm machine skips apt.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: deps $(BPF_OBJ)
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'

install: deps
	sh deploy/install.sh $(INSTALL_ARGS)

uninstall:
	sh deploy/install.sh --uninstall $(INSTALL_ARGS)

lint: venv
	$(VENV)/bin/ruff check tcplife_exporter tests bench setup.py

clean:
	rm -rf $(VENV) build dist *.egg-info $(BPF_OBJ) bench/churn bench/noop.bpf.o
