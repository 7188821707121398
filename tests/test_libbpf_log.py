"""libbpf's messages are folded into one-line errors."""

from __future__ import annotations

from tcplife_exporter.libbpf import LibbpfLog


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
