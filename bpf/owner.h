/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A session's owner (process id and name), taken only where the kernel runs
 * in the owner's own context.
 *
 * Relies on:
 * - A socket locked by a user task changes state in that task (connect(),
 *   close(), shutdown()); otherwise the callback runs in softirq or a timer,
 *   where "current" is whatever task the CPU happened to be running.
 * - bpf_get_current_task_btf() is open to sock_ops programs, while Linux 6.1
 *   refuses them bpf_get_current_pid_tgid() and 6.12 bpf_get_current_comm()
 *   (the verifier says so on Debian's kernels).
 * Checked by: test_accuracy.py (owners of both ends, and none put on a
 * session closed in softirq), test_filters.py (-p with accepted sessions).
 */
#ifndef TCPLIFE_OWNER_H
#define TCPLIFE_OWNER_H

static __always_inline bool in_owner_context(const struct sock *sk)
{
	return sk->sk_lock.owned;
}

/* The owner's pid (tgid) and name, if the owner is the running task: else false. */
static __always_inline bool owner_if_running(const struct sock *sk, __u32 *pid, char *comm)
{
	struct task_struct *task;

	if (!in_owner_context(sk))
		return false;
	task = bpf_get_current_task_btf();
	*pid = task->tgid;
	bpf_probe_read_kernel(comm, TASK_COMM_LEN, task->comm);
	return true;
}

#endif /* TCPLIFE_OWNER_H */
