/*
 * exitcode <n>
 *
 * Exits with status n (0..255), so tests can check exit codes without a
 * shell. Bad usage prints a usage line and exits with status 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	char *end;
	long n;

	if (argc != 2)
		goto usage;
	errno = 0;
	n = strtol(argv[1], &end, 10);
	if (errno || end == argv[1] || *end || n < 0 || n > 255)
		goto usage;
	return (int)n;
usage:
	fprintf(stderr, "usage: exitcode <n>   (0 <= n <= 255)\n");
	return 2;
}
