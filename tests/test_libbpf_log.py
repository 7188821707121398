"""libbpf's messages are folded into one-line errors."""

from __future__ import annotations

import subprocess

import pytest

from tcplife_exporter.errors import TcplifeError
from tcplife_exporter.libbpf import BpfObject, LibbpfLog, libbpf_log


def test_a_verifier_log_shrinks_to_its_verdict():
    log = LibbpfLog()
    log.lines = [
        "libbpf: prog 'p': BPF program load failed: Invalid argument\n",
        "libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n0: R1=ctx() R10=fp0\n"
        "19: (4f) r1 |= r7\nvalue -2147483648 makes trusted_ptr_ pointer be out of bounds\n"
        "processed 20 insns (limit 1000000)\n-- END PROG LOAD LOG --\n",
        "libbpf: failed to load object 'x.o'\n",
    ]
    tail = log.tail()
    assert "\n" not in tail
    assert "verifier: value -2147483648 makes trusted_ptr_ pointer be out of bounds" in tail
    assert "19: (4f)" not in tail and tail.endswith("failed to load object 'x.o'")


# Valid but long (the verifier logs every instruction it walks), then an access
# the verifier refuses: the verdict is at the end of a log of many kilobytes.
LONG_THEN_BAD = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sockops")
int long_then_bad(struct bpf_sock_ops *ops)
{
	volatile __u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 300; i++)
		sum += ops->op;
	return *(int *)(long)sum;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.bpf
def test_the_verdict_of_a_long_verifier_log_reaches_the_error(tmp_path):
    source, obj = tmp_path / "bad.bpf.c", tmp_path / "bad.bpf.o"
    source.write_text(LONG_THEN_BAD)
    multiarch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                               check=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I/usr/include/{multiarch}", "-c",
                    str(source), "-o", str(obj)], check=True)
    with pytest.raises(TcplifeError) as refused:
        BpfObject(str(obj)).load()
    assert max(len(line) for line in libbpf_log.lines) > 8192  # the whole log, one message
    assert "invalid mem access 'scalar'" in str(refused.value), refused.value
