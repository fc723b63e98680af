/*
 * opt-flock hold <file>
 * opt-flock try <file>
 *
 * flock(2) for the checkpoint tests of --file-locks (busybox-static as Debian
 * builds it has no flock applet).
 *
 *   hold  open <file> (created 0644 if missing), take an exclusive flock on it,
 *         print "locked <file> inode <ino>" and wait, holding the lock, until
 *         SIGTERM or SIGINT (exit 0). Each SIGUSR1 prints "still holding".
 *   try   try to take the lock without blocking: print "free" and exit 0 if
 *         it could (the lock is dropped again at once), "held" and exit 1 if
 *         another open file description holds it.
 *
 * Errors print "ERROR <what>" and exit 4; bad usage exits 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t report_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	report_requested = 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: opt-flock hold|try <file>\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t block, waitmask;
	struct stat st;
	int fd, hold;

	if (argc != 3)
		return usage();
	if (strcmp(argv[1], "hold") == 0)
		hold = 1;
	else if (strcmp(argv[1], "try") == 0)
		hold = 0;
	else
		return usage();

	fd = open(argv[2], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		dprintf(1, "ERROR open %s: %s\n", argv[2], strerror(errno));
		return 4;
	}
	if (!hold) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
			dprintf(1, "free\n");
			return 0;
		}
		if (errno == EWOULDBLOCK) {
			dprintf(1, "held\n");
			return 1;
		}
		dprintf(1, "ERROR flock %s: %s\n", argv[2], strerror(errno));
		return 4;
	}

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0) {
		dprintf(1, "ERROR flock %s: %s\n", argv[2], strerror(errno));
		return 4;
	}
	dprintf(1, "locked %s inode %llu\n", argv[2], (unsigned long long)st.st_ino);
	while (!stop_requested) {
		sigsuspend(&waitmask);
		if (report_requested) {
			report_requested = 0;
			dprintf(1, "still holding\n");
		}
	}
	return 0;
}
