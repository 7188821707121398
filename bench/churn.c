// SPDX-License-Identifier: Apache-2.0
/*
 * churn: a TCP connection-churn load generator for loopback.
 *
 * Each worker thread plays both ends of one session after another: connect,
 * accept, the client sends SIZE bytes, the server answers SIZE bytes, the
 * server shuts down, the client reads the end of stream and shuts down, both
 * close. Every byte is checked. Closing from the server side keeps TIME_WAIT
 * there, so the clients' ephemeral ports come back at once; sessions still
 * close with FIN (no SO_LINGER 0). Each worker spreads its sessions over several server
 * ports so that a 4-tuple is reused rarely.
 *
 * Prints one JSON line: sessions completed, bytes per session each way,
 * failures (by the call that failed), duration and rate.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE (1 << 20)

enum failure { FAIL_SOCKET, FAIL_CONNECT, FAIL_ACCEPT, FAIL_SEND, FAIL_RECV, FAIL_EOF, FAIL_KINDS };
static const char *failure_names[FAIL_KINDS] = {
	"socket", "connect", "accept", "send", "recv", "eof",
};

struct options {
	int workers;
	double seconds;
	size_t size;
	int ports;		/* server ports per worker */
	int base_port;
	bool ipv6;
	bool client_closes;	/* the client closes first (TIME_WAIT on the client side) */
	double rate;		/* sessions per second over all workers; 0: as fast as possible */
	bool pin;		/* worker i runs on CPU i (modulo the CPUs online) only */
};

struct worker {
	const struct options *opt;
	int index;
	int listeners[64];
	unsigned long long sessions;
	unsigned long long failures[FAIL_KINDS];
	pthread_t thread;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static socklen_t server_address(const struct options *opt, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (opt->ipv6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		return sizeof(*a);
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;

	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sizeof(*a);
}

static int listen_on(const struct options *opt, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = server_address(opt, port, &ss);
	int one = 1;
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);

	if (fd < 0) {
		fprintf(stderr, "churn: socket: %s\n", strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 4096)) {
		fprintf(stderr, "churn: cannot listen on port %d: %s\n", port, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static bool send_all(int fd, const char *buf, size_t size)
{
	while (size) {
		ssize_t n = send(fd, buf, size, MSG_NOSIGNAL);

		if (n <= 0)
			return false;
		buf += n;
		size -= n;
	}
	return true;
}

/* Reads exactly size bytes, each equal to `fill`. */
static bool recv_exactly(int fd, char *buf, size_t size, char fill)
{
	while (size) {
		ssize_t n = recv(fd, buf, size, 0);

		if (n <= 0)
			return false;
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != fill)
				return false;
		size -= n;
	}
	return true;
}

/* One session; returns -1 on success, else the failure kind. */
static int one_session(const struct options *opt, int listener, int port, char *buf)
{
	struct sockaddr_storage ss;
	socklen_t len = server_address(opt, port, &ss);
	int client, server = -1, failed = -1, first, second;

	client = socket(ss.ss_family, SOCK_STREAM, 0);
	if (client < 0)
		return FAIL_SOCKET;
	if (connect(client, (struct sockaddr *)&ss, len)) {
		failed = FAIL_CONNECT;
		goto out;
	}
	server = accept(listener, NULL, NULL);
	if (server < 0) {
		failed = FAIL_ACCEPT;
		goto out;
	}
	memset(buf, 'c', opt->size);
	if (!send_all(client, buf, opt->size)) {
		failed = FAIL_SEND;
		goto out;
	}
	if (!recv_exactly(server, buf, opt->size, 'c')) {
		failed = FAIL_RECV;
		goto out;
	}
	memset(buf, 's', opt->size);
	if (!send_all(server, buf, opt->size)) {
		failed = FAIL_SEND;
		goto out;
	}
	if (!recv_exactly(client, buf, opt->size, 's')) {
		failed = FAIL_RECV;
		goto out;
	}
	/*
	 * Both ends shut down before close(): every state change then happens in
	 * this thread, and close() finds the sockets closed already. The close()
	 * that drops a socket's last reference may run in another process: on the
	 * test VMs the VM agent (PID 1) now and then holds a reference to other
	 * processes' socket files, and a socket whose last reference it drops
	 * closes in its thread, where that kernel runs no BPF program (README,
	 * "Closes in the VM agent's thread").
	 */
	first = opt->client_closes ? client : server;
	second = opt->client_closes ? server : client;
	shutdown(first, SHUT_WR);
	if (recv(second, buf, 1, 0) != 0)	/* the first end's FIN */
		failed = FAIL_EOF;
	shutdown(second, SHUT_WR);
	if (recv(first, buf, 1, 0) != 0)	/* the second end's FIN */
		failed = FAIL_EOF;
out:
	if (server >= 0)
		close(server);
	if (client >= 0)
		close(client);
	return failed;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	const struct options *opt = w->opt;
	char *buf = malloc(opt->size ? opt->size : 1);
	double start = now(), deadline = start + opt->seconds;
	double interval = opt->rate > 0 ? opt->workers / opt->rate : 0;
	unsigned long long n = 0;

	if (!buf) {
		fprintf(stderr, "churn: out of memory\n");
		exit(1);
	}
	while (now() < deadline) {
		int k = n++ % opt->ports;
		int port = opt->base_port + w->index * opt->ports + k;
		int failed = one_session(opt, w->listeners[k], port, buf);

		if (failed < 0)
			w->sessions++;
		else
			w->failures[failed]++;
		if (interval) {
			double next = start + n * interval;
			double wait = (next < deadline ? next : deadline) - now();

			if (wait > 0) {
				struct timespec ts = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };

				nanosleep(&ts, NULL);
			}
		}
	}
	free(buf);
	return NULL;
}

/*
 * Pinned workers keep each session on one CPU: at a fixed rate the busy time
 * per session then varies far less from run to run (no migrations, whose cost
 * in a VM depends on which CPU happens to be idle).
 */
static int start_worker(struct worker *w)
{
	pthread_attr_t attr;
	cpu_set_t cpu;
	int err;

	if (pthread_attr_init(&attr))
		return -1;
	if (w->opt->pin) {
		CPU_ZERO(&cpu);
		CPU_SET(w->index % sysconf(_SC_NPROCESSORS_ONLN), &cpu);
		pthread_attr_setaffinity_np(&attr, sizeof(cpu), &cpu);
	}
	err = pthread_create(&w->thread, &attr, work, w);
	pthread_attr_destroy(&attr);
	return err;
}

/* A whole-string number within [low, high], else the usage message. */
static double number(const char *text, double low, double high)
{
	char *end;
	double value = strtod(text, &end);

	if (end == text || *end || value < low || value > high) {
		fprintf(stderr, "churn: %s is not a number from %g to %g\n", text, low, high);
		exit(2);
	}
	return value;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: churn [-w workers] [-d seconds] [-s bytes] [-p ports-per-worker]\n"
		"             [-b base-port] [-r sessions-per-second] [-6] [-C] [-P]\n"
		"  -C  the client closes first (default: the server, keeping clients' ports free)\n"
		"  -P  pin worker i to CPU i (modulo the CPUs online)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct options opt = { .workers = 4, .seconds = 10, .size = 64, .ports = 8,
			       .base_port = 20000 };
	unsigned long long sessions = 0, failures[FAIL_KINDS] = { 0 }, failed = 0;
	struct worker *workers;
	double started, elapsed;
	int c;

	while ((c = getopt(argc, argv, "w:d:s:p:b:r:6CP")) != -1) {
		switch (c) {
		case 'w': opt.workers = (int)number(optarg, 1, 1024); break;
		case 'd': opt.seconds = number(optarg, 0.001, 1e6); break;
		case 's': opt.size = (size_t)number(optarg, 0, MAX_SIZE); break;
		case 'p': opt.ports = (int)number(optarg, 1, 64); break;
		case 'b': opt.base_port = (int)number(optarg, 1, 65535); break;
		case 'r': opt.rate = number(optarg, 0, 1e9); break;
		case '6': opt.ipv6 = true; break;
		case 'C': opt.client_closes = true; break;
		case 'P': opt.pin = true; break;
		default: usage();
		}
	}
	if ((long)opt.base_port + (long)opt.workers * opt.ports > 65536) {
		fprintf(stderr, "churn: ports %d to %ld do not all exist\n", opt.base_port,
			(long)opt.base_port + (long)opt.workers * opt.ports - 1);
		return 2;
	}

	workers = calloc(opt.workers, sizeof(*workers));
	if (!workers) {
		fprintf(stderr, "churn: out of memory\n");
		return 1;
	}
	for (int i = 0; i < opt.workers; i++) {
		workers[i].opt = &opt;
		workers[i].index = i;
		for (int k = 0; k < opt.ports; k++) {
			workers[i].listeners[k] = listen_on(&opt, opt.base_port + i * opt.ports + k);
			if (workers[i].listeners[k] < 0)
				return 1;
		}
	}
	started = now();
	for (int i = 0; i < opt.workers; i++) {
		if (start_worker(&workers[i])) {
			fprintf(stderr, "churn: cannot start worker %d\n", i);
			return 1;
		}
	}
	for (int i = 0; i < opt.workers; i++) {
		pthread_join(workers[i].thread, NULL);
		sessions += workers[i].sessions;
		for (int k = 0; k < FAIL_KINDS; k++) {
			failures[k] += workers[i].failures[k];
			failed += workers[i].failures[k];
		}
	}
	elapsed = now() - started;

	printf("{\"sessions\": %llu, \"bytes_each_way\": %zu, \"failures\": %llu, \"failed\": {",
	       sessions, opt.size, failed);
	for (int k = 0; k < FAIL_KINDS; k++)
		printf("%s\"%s\": %llu", k ? ", " : "", failure_names[k], failures[k]);
	printf("}, \"seconds\": %.3f, \"rate\": %.1f, \"workers\": %d, \"family\": %d}\n",
	       elapsed, sessions / elapsed, opt.workers, opt.ipv6 ? 6 : 4);
	return failed ? 3 : 0;
}
