/*
 * opt-dirty <MiB>
 *
 * Memory that is rewritten on request, for the checkpoint tests of
 * --auto-dedup: pages a pre-dump copied and that are written again before the
 * final dump are dumped again, and --auto-dedup then punches them out of the
 * pre-dump's images.
 *
 * Fills MiB mebibytes with generation 1 of a pattern (the 64-bit word i holds
 * gen * 0x9E3779B97F4A7C15 + i) and prints "filled <MiB> MiB gen 1".
 *   SIGUSR1  write every word again with the next generation, print
 *            "rewritten gen <g>"
 *   SIGUSR2  check every word, print "verify ok gen <g>" or
 *            "verify FAILED gen <g> at offset <n>"
 *   SIGTERM  exit 0 (SIGINT too)
 * Signals are taken only in sigsuspend(), so none is lost; output is
 * unbuffered. Bad usage exits with status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t rewrite_requested, verify_requested, stop_requested;

static void on_usr1(int sig)
{
	(void)sig;
	rewrite_requested = 1;
}

static void on_usr2(int sig)
{
	(void)sig;
	verify_requested = 1;
}

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void fill(uint64_t *mem, uint64_t words, uint64_t gen)
{
	for (uint64_t i = 0; i < words; i++)
		mem[i] = gen * UINT64_C(0x9E3779B97F4A7C15) + i;
}

int main(int argc, char **argv)
{
	unsigned long long mib;
	uint64_t *mem, words, gen = 1;
	struct sigaction sa;
	sigset_t block, waitmask;
	char *end;

	if (argc != 2) {
		fprintf(stderr, "usage: opt-dirty <MiB>\n");
		return 2;
	}
	errno = 0;
	mib = strtoull(argv[1], &end, 10);
	if (errno || end == argv[1] || *end || mib == 0 || mib > (SIZE_MAX >> 21)) {
		fprintf(stderr, "usage: opt-dirty <MiB>\n");
		return 2;
	}

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	words = (uint64_t)mib << 17; /* 8-byte words per MiB */
	mem = mmap(NULL, (size_t)mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	if (mem == MAP_FAILED) {
		dprintf(1, "ERROR mmap: %s\n", strerror(errno));
		return 4;
	}
	fill(mem, words, gen);
	dprintf(1, "filled %llu MiB gen %llu\n", mib, (unsigned long long)gen);

	while (!stop_requested) {
		sigsuspend(&waitmask);
		if (rewrite_requested) {
			rewrite_requested = 0;
			fill(mem, words, ++gen);
			dprintf(1, "rewritten gen %llu\n", (unsigned long long)gen);
		}
		if (verify_requested) {
			uint64_t i;

			verify_requested = 0;
			for (i = 0; i < words; i++)
				if (mem[i] != gen * UINT64_C(0x9E3779B97F4A7C15) + i)
					break;
			if (i == words)
				dprintf(1, "verify ok gen %llu\n", (unsigned long long)gen);
			else
				dprintf(1, "verify FAILED gen %llu at offset %llu\n",
					(unsigned long long)gen, (unsigned long long)(i * 8));
		}
	}
	return 0;
}
