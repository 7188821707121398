# Two entry points for a fresh Debian 12 / Ubuntu 24.04 machine, as root:
#   make run    installs what is missing, builds, and traces sessions (tcplife)
#   make test   installs what is missing, builds, and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
BPF_OBJ := tcplife_exporter/bpf/tcplife.bpf.o
BPF_SRC := bpf/tcplife.bpf.c bpf/tcplife.h bpf/kernel.h
MULTIARCH := $(shell gcc -dumpmachine 2>/dev/null || echo $$(uname -m)-linux-gnu)
APT_PACKAGES := clang llvm libbpf-dev libbpf1 gcc make python3-venv python3-pip iproute2

.PHONY: run test bpf deps venv lint clean

run: venv
	$(VENV)/bin/tcplife

test: venv
	$(VENV)/bin/ruff check tcplife_exporter tests setup.py
	$(VENV)/bin/pytest -v tests

bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	@mkdir -p $(dir $@)
	clang -g -O2 -Wall -Werror -target bpf -I/usr/include/$(MULTIARCH) -Ibpf -c $< -o $@

# System packages: only those not installed yet, so a warm machine skips apt.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: deps $(BPF_OBJ)
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'

lint: venv
	$(VENV)/bin/ruff check tcplife_exporter tests setup.py

clean:
	rm -rf $(VENV) build dist *.egg-info $(BPF_OBJ)
