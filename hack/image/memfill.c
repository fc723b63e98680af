/*
 * memfill <MiB> <seed>
 *
 * Allocates MiB mebibytes, fills them with a pattern computed from seed, prints
 * "filled <MiB> MiB" and waits. The pattern is re-computable: the 64-bit word
 * at byte offset 8*i holds word(seed, i), a splitmix64-style mix of
 * seed + (i + 1) * 0x9E3779B97F4A7C15, so any word can be checked on its own.
 *
 *   SIGUSR1  re-verify all memory, print "verify ok <MiB> MiB" or
 *            "verify FAILED at offset <n>" (n = byte offset of the first bad
 *            word), and keep waiting
 *   SIGTERM  exit 0 (SIGINT too)
 *
 * The signal handlers only set flags; the work happens in the main loop, which
 * waits in sigsuspend() with the signals blocked otherwise, so none is lost.
 * Output is flushed after every line. Bad usage exits with status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static volatile sig_atomic_t verify_requested;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig)
{
	(void)sig;
	verify_requested = 1;
}

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static inline uint64_t word(uint64_t seed, uint64_t i)
{
	uint64_t z = seed + (i + 1) * UINT64_C(0x9E3779B97F4A7C15);

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static int usage(void)
{
	fprintf(stderr, "usage: memfill <MiB> <seed>\n");
	return 2;
}

int main(int argc, char **argv)
{
	unsigned long long mib, seed;
	uint64_t *mem, words, i;
	size_t bytes;
	char *end;
	struct sigaction sa;
	sigset_t block, waitmask;

	if (argc != 3)
		return usage();
	errno = 0;
	mib = strtoull(argv[1], &end, 10);
	if (errno || end == argv[1] || *end || mib == 0 || mib > (SIZE_MAX >> 21))
		return usage();
	seed = strtoull(argv[2], &end, 0);
	if (errno || end == argv[2] || *end)
		return usage();

	/* Block the signals first; they are only taken inside sigsuspend(). */
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	sigdelset(&waitmask, SIGUSR1);
	sigdelset(&waitmask, SIGTERM);
	sigdelset(&waitmask, SIGINT);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	bytes = (size_t)mib << 20;
	words = bytes / sizeof(uint64_t);
	mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "memfill: mmap %llu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	for (i = 0; i < words; i++)
		mem[i] = word(seed, i);
	printf("filled %llu MiB\n", mib);
	fflush(stdout);

	for (;;) {
		while (!verify_requested && !stop_requested)
			sigsuspend(&waitmask);
		if (stop_requested)
			return 0;
		verify_requested = 0;
		for (i = 0; i < words; i++)
			if (mem[i] != word(seed, i))
				break;
		if (i == words)
			printf("verify ok %llu MiB\n", mib);
		else
			printf("verify FAILED at offset %" PRIu64 "\n", i * sizeof(uint64_t));
		fflush(stdout);
	}
}
