/*
 * opt-tcp <port> [interval_ms]
 *
 * One TCP connection over loopback, both ways, for the checkpoint tests of
 * --tcp-established. The process listens on 127.0.0.1:<port>, forks a client
 * that connects to it once, and accepts that one connection; the listener is
 * then closed. Afterwards both ends send a numbered record (1, 2, 3, ...) every
 * interval_ms milliseconds (default 50) and check that what they receive goes
 * on from the last number without a gap. stdout, unbuffered, one line each:
 *
 *   server accepted <client port>       once, at the start
 *   client connected <client port>      once, at the start
 *   server got <n> / client got <n>     for every record received
 *   <side> GAP expected <n> got <m>     then exit 3
 *   <side> EOF / <side> ERROR <what>     then exit 4
 *
 * There is no reconnect: a broken connection ends the program. SIGTERM and
 * SIGINT end both sides with status 0 (as PID 1 a process needs handlers).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RECORD 16 /* "%015llu\n" */

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: opt-tcp <port> [interval_ms]\n");
	return 2;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Exchange records on fd until stopped; returns the exit status. */
static int exchange(int fd, const char *side, long interval_ms)
{
	unsigned long long sent = 0, expected = 1;
	char in[RECORD * 64];
	size_t have = 0;
	long long next = now_ms();

	while (!stop_requested) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		long long wait = next - now_ms();
		int r;

		if (wait <= 0) {
			char out[RECORD + 1];

			snprintf(out, sizeof(out), "%015llu\n", ++sent);
			if (send_all(fd, out, RECORD) < 0) {
				dprintf(1, "%s ERROR send: %s\n", side, strerror(errno));
				return 4;
			}
			next += interval_ms;
			continue;
		}
		r = poll(&pfd, 1, (int)wait);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			dprintf(1, "%s ERROR poll: %s\n", side, strerror(errno));
			return 4;
		}
		if (r == 0)
			continue;
		ssize_t n = recv(fd, in + have, sizeof(in) - have, 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			dprintf(1, "%s ERROR recv: %s\n", side, strerror(errno));
			return 4;
		}
		if (n == 0) {
			dprintf(1, "%s EOF\n", side);
			return 4;
		}
		have += (size_t)n;
		size_t off = 0;
		for (; have - off >= RECORD; off += RECORD) {
			unsigned long long got = strtoull(in + off, NULL, 10);

			if (got != expected) {
				dprintf(1, "%s GAP expected %llu got %llu\n", side, expected, got);
				return 3;
			}
			dprintf(1, "%s got %llu\n", side, got);
			expected++;
		}
		memmove(in, in + off, have - off);
		have -= off;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr;
	socklen_t len = sizeof(addr);
	struct sigaction sa;
	long port, interval_ms = 50;
	int one = 1, lfd, fd, status;
	char *end;
	pid_t child;

	if (argc < 2 || argc > 3)
		return usage();
	port = strtol(argv[1], &end, 10);
	if (end == argv[1] || *end || port < 1 || port > 65535)
		return usage();
	if (argc == 3) {
		interval_ms = strtol(argv[2], &end, 10);
		if (end == argv[2] || *end || interval_ms < 1)
			return usage();
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop; /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((unsigned short)port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 1) < 0) {
		dprintf(1, "server ERROR listen: %s\n", strerror(errno));
		return 4;
	}

	child = fork();
	if (child < 0) {
		dprintf(1, "server ERROR fork: %s\n", strerror(errno));
		return 4;
	}
	if (child == 0) {
		close(lfd);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			dprintf(1, "client ERROR connect: %s\n", strerror(errno));
			return 4;
		}
		if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
			return 4;
		dprintf(1, "client connected %u\n", ntohs(addr.sin_port));
		return exchange(fd, "client", interval_ms);
	}

	fd = accept(lfd, (struct sockaddr *)&addr, &len);
	if (fd < 0) {
		dprintf(1, "server ERROR accept: %s\n", strerror(errno));
		return 4;
	}
	close(lfd);
	dprintf(1, "server accepted %u\n", ntohs(addr.sin_port));
	status = exchange(fd, "server", interval_ms);
	close(fd);
	kill(child, SIGTERM);
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;
	return status;
}
