/*
 * counter [interval_ms]
 *
 * Prints 1, 2, 3, ... one number per line on stdout, flushing after every
 * line, every interval_ms milliseconds (default 100). A checkpointed and
 * restored counter goes on from the number it had reached, which is what the
 * checkpoint/restore tests look for.
 *
 * SIGTERM and SIGINT end it with status 0. The handlers matter: as PID 1 of a
 * PID namespace a process ignores signals it has no handler for.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: counter [interval_ms]\n");
	return 2;
}

int main(int argc, char **argv)
{
	long interval_ms = 100;
	struct sigaction sa;
	unsigned long long n;

	if (argc > 2)
		return usage();
	if (argc == 2) {
		char *end;
		errno = 0;
		interval_ms = strtol(argv[1], &end, 10);
		if (errno || end == argv[1] || *end || interval_ms < 0)
			return usage();
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop; /* no SA_RESTART: nanosleep returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	for (n = 1; !stop_requested; n++) {
		struct timespec left;

		printf("%llu\n", n);
		fflush(stdout);
		left.tv_sec = interval_ms / 1000;
		left.tv_nsec = (interval_ms % 1000) * 1000000L;
		while (!stop_requested && nanosleep(&left, &left) == -1 && errno == EINTR)
			;
	}
	return 0;
}
