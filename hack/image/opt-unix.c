/*
 * opt-unix dgram|stream <path> [interval_ms]
 *
 * A client of a unix socket whose peer is outside the container, for the
 * checkpoint tests of --ext-unix-sk. It connects a SOCK_DGRAM or SOCK_STREAM
 * socket to <path> once (retrying every 20 ms for up to 30 s while <path> does
 * not exist or refuses, so the peer may come up after the container) and then
 * sends "<n>\n" (n = 1, 2, 3, ...) every interval_ms milliseconds (default 50),
 * printing on stdout (unbuffered):
 *
 *   connected <path>     once, at the start
 *   sent <n>             after every send
 *   ERROR <what>         then exit 4 (a failed send ends it: no reconnect)
 *
 * SIGTERM and SIGINT end it with status 0 (as PID 1 a process needs handlers).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: opt-unix dgram|stream <path> [interval_ms]\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr;
	struct sigaction sa;
	long interval_ms = 50;
	unsigned long long n;
	int type, fd;
	char *end;

	if (argc < 3 || argc > 4)
		return usage();
	if (strcmp(argv[1], "dgram") == 0)
		type = SOCK_DGRAM;
	else if (strcmp(argv[1], "stream") == 0)
		type = SOCK_STREAM;
	else
		return usage();
	if (strlen(argv[2]) >= sizeof(addr.sun_path))
		return usage();
	if (argc == 4) {
		interval_ms = strtol(argv[3], &end, 10);
		if (end == argv[3] || *end || interval_ms < 1)
			return usage();
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop; /* no SA_RESTART: nanosleep returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	strcpy(addr.sun_path, argv[2]);
	fd = socket(AF_UNIX, type, 0);
	if (fd < 0) {
		dprintf(1, "ERROR socket: %s\n", strerror(errno));
		return 4;
	}
	for (int tries = 1500; connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0; tries--) {
		struct timespec pause = { 0, 20 * 1000000L };

		if (stop_requested)
			return 0;
		if (tries == 0 || (errno != ENOENT && errno != ECONNREFUSED && errno != EINTR)) {
			dprintf(1, "ERROR connect %s: %s\n", argv[2], strerror(errno));
			return 4;
		}
		nanosleep(&pause, NULL);
	}
	dprintf(1, "connected %s\n", argv[2]);

	for (n = 1; !stop_requested; n++) {
		struct timespec left;
		char line[32];
		int len = snprintf(line, sizeof(line), "%llu\n", n);

		if (send(fd, line, (size_t)len, MSG_NOSIGNAL) != len) {
			if (errno == EINTR && stop_requested)
				break;
			dprintf(1, "ERROR send %llu: %s\n", n, strerror(errno));
			return 4;
		}
		dprintf(1, "sent %llu\n", n);
		left.tv_sec = interval_ms / 1000;
		left.tv_nsec = (interval_ms % 1000) * 1000000L;
		while (!stop_requested && nanosleep(&left, &left) == -1 && errno == EINTR)
			;
	}
	return 0;
}
