#!/bin/sh
# Installs tcplife-exporter as a systemd service, or removes it. Run as root
# from a checkout, after `make deps` (`make install` does both):
#
#   deploy/install.sh [--prefix DIR] [--config-dir DIR] [--unit-dir DIR]
#   deploy/install.sh --uninstall [--purge] [the same directories]
#
# Install: the package into its own virtual environment in --prefix
# (/opt/tcplife-exporter), built with the distribution's Python; the example
# config as --config-dir/config.yaml (/etc/tcplife-exporter), never over an
# existing one; the unit into --unit-dir (/etc/systemd/system), with its paths
# rewritten if other directories were given. Installing again upgrades the
# package and restarts a running service.
# Uninstall: stops and removes the unit and the environment; the config stays
# unless --purge.
set -eu

prefix=/opt/tcplife-exporter
config_dir=/etc/tcplife-exporter
unit_dir=/etc/systemd/system
python=${PYTHON:-/usr/bin/python3}
action=install
purge=no
unit=tcplife-exporter.service

fail() {
	echo "install.sh: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case $1 in
	--prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
	--config-dir) config_dir=${2:?--config-dir needs a directory}; shift 2 ;;
	--unit-dir) unit_dir=${2:?--unit-dir needs a directory}; shift 2 ;;
	--uninstall) action=uninstall; shift ;;
	--purge) purge=yes; shift ;;
	*) fail "unknown argument $1 (see the comment at the top of this script)" ;;
	esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || fail "run as root: it writes $prefix, $config_dir and $unit_dir"
# systemctl only for the unit directory systemd reads (not for a trial install
# elsewhere), and start, stop or reload only where systemd runs (not in a
# container or chroot; enable and disable work there too).
owns_the_unit() { [ "$unit_dir" = /etc/systemd/system ] && command -v systemctl >/dev/null; }
systemd_running() { owns_the_unit && [ -d /run/systemd/system ]; }

if [ $action = uninstall ]; then
	if systemd_running; then
		systemctl disable --now $unit 2>/dev/null || true
	elif owns_the_unit; then
		systemctl disable $unit 2>/dev/null || true
	fi
	rm -f "$unit_dir/$unit"
	if systemd_running; then systemctl daemon-reload; fi
	rm -rf "$prefix"
	if [ $purge = yes ]; then
		rm -rf "$config_dir"
	else
		echo "kept $config_dir (--purge removes it)"
	fi
	echo "tcplife-exporter removed"
	exit 0
fi

[ -x "$python" ] || fail "$python not found: install python3 and python3-venv (make deps)"
umask 022	# the service runs as another user: everything must be readable
# Build first, aside: if that fails (no compiler, no index), a running service
# keeps its environment.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$python" -m venv "$build/venv" || fail "cannot create a virtual environment with $python"
"$build/venv/bin/pip" wheel --quiet --disable-pip-version-check -w "$build/wheels" "$repo" ||
	fail "building the package failed: are clang, libbpf-dev, python3-dev and make installed (make deps)?"
"$python" -m venv --clear "$prefix" || fail "cannot create a virtual environment in $prefix"
"$prefix/bin/pip" install --quiet --disable-pip-version-check --no-index \
	--find-links "$build/wheels" tcplife-exporter ||
	fail "installing the built package into $prefix failed"

if [ -e "$config_dir/config.yaml" ]; then
	echo "kept the existing $config_dir/config.yaml"
else
	install -D -m 0644 "$repo/config.example.yaml" "$config_dir/config.yaml"
fi

mkdir -p "$unit_dir"
sed -e "s|/opt/tcplife-exporter|$prefix|g" -e "s|/etc/tcplife-exporter|$config_dir|g" \
	"$repo/deploy/systemd/$unit" >"$unit_dir/$unit.tmp"
chmod 0644 "$unit_dir/$unit.tmp"
mv "$unit_dir/$unit.tmp" "$unit_dir/$unit"

echo "installed: $prefix, $config_dir/config.yaml, $unit_dir/$unit"
if systemd_running; then
	systemctl daemon-reload
	systemctl try-restart $unit
	systemctl is-enabled --quiet $unit || echo "start it with: systemctl enable --now tcplife-exporter"
fi
