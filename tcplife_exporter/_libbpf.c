// SPDX-License-Identifier: Apache-2.0
/*
 * The package's libbpf: this extension needs libbpf.so.1, and a wheel made
 * with `make wheel` (auditwheel repair) carries libbpf and what it needs
 * beside it, the extension pointed at them, so it runs where the system has
 * no libbpf.so.1 or an older one. libbpf.py loads this file with ctypes and
 * finds libbpf's functions through it; importing it from Python gives an
 * empty module.
 */
#include <Python.h>
#include <bpf/libbpf.h>

/* A reference to libbpf, so that the linker keeps libbpf.so.1 as a dependency. */
__attribute__((used)) static __u32 (*const libbpf_version)(void) = libbpf_major_version;

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "tcplife_exporter._libbpf",
	.m_doc = "needs libbpf, which the ctypes binding (tcplife_exporter.libbpf) reaches through it",
	.m_size = 0,
};

PyMODINIT_FUNC PyInit__libbpf(void)
{
	return PyModuleDef_Init(&module);
}
