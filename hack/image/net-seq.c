/*
 * net-seq <port>
 *
 * The server end of one TCP connection whose byte stream is checked in both
 * directions, for the network checkpoint tests (--tcp-established with
 * --empty-ns network). It listens on 0.0.0.0:<port>, accepts ONE connection
 * and closes the listener at once, so a client that reconnected would be
 * refused. Then, for every line the client sends,
 *
 *   c<n> <payload(n)>\n            n = 1, 2, 3, ...
 *
 * it checks that n is the next number and that the payload is the expected
 * one, and answers with its own numbered line
 *
 *   s<m> <n> <hash> <payload(m)>\n  m = 1, 2, 3, ... (one answer per line)
 *
 * where <hash> is the 64-bit FNV-1a of every byte received on the connection
 * so far (lowercase hex), so the client can check the whole stream it sent
 * arrived byte for byte. payload(k) is (k * 37) % 97 letters, letter i being
 * 'a' + (k + i) % 26. On a gap or a bad payload it sends "bad <what>\n" and
 * exits 3; on EOF it exits 0; on an error 4. The only output on stdout is
 * "listening <port>" and "accepted <client port>" at the start.
 *
 * SIGTERM and SIGINT end it with status 0 (as PID 1 it needs handlers).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINE_MAX_LEN 256

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static size_t payload(unsigned long long k, char *out)
{
	size_t len = (size_t)((k * 37) % 97);

	for (size_t i = 0; i < len; i++)
		out[i] = (char)('a' + (k + i) % 26);
	return len;
}

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

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

static int refuse(int fd, const char *what)
{
	char msg[LINE_MAX_LEN + 16];
	int len = snprintf(msg, sizeof(msg), "bad %s\n", what);

	send_all(fd, msg, (size_t)len);
	return 3;
}

/* Check one line (without its newline); answer it. Returns 0 or an exit status. */
static int handle(int fd, const char *line, size_t len, unsigned long long *next,
		  uint64_t hash)
{
	char expected[LINE_MAX_LEN], answer[LINE_MAX_LEN + 64];
	int head = snprintf(expected, sizeof(expected), "c%llu ", *next);
	size_t plen = payload(*next, expected + head);
	int alen;

	if ((size_t)head + plen != len || memcmp(expected, line, len) != 0) {
		char what[LINE_MAX_LEN];

		snprintf(what, sizeof(what), "expected c%llu got %.*s", *next,
			 (int)(len < 40 ? len : 40), line);
		return refuse(fd, what);
	}
	alen = snprintf(answer, sizeof(answer), "s%llu %llu %016llx ", *next, *next,
			(unsigned long long)hash);
	alen += (int)payload(*next, answer + alen);
	answer[alen++] = '\n';
	if (send_all(fd, answer, (size_t)alen) < 0)
		return 4;
	(*next)++;
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct sockaddr_in peer;
	socklen_t peer_len = sizeof(peer);
	char buf[4096], line[LINE_MAX_LEN];
	size_t used = 0;
	unsigned long long next = 1;
	uint64_t hash = 0xcbf29ce484222325ULL;
	int one = 1, lfd, fd;

	if (argc != 2) {
		fprintf(stderr, "usage: net-seq <port>\n");
		return 2;
	}
	signal(SIGTERM, on_stop);
	signal(SIGINT, on_stop);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IONBF, 0);
	addr.sin_port = htons((unsigned short)atoi(argv[1]));
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 1) < 0) {
		perror("net-seq: listen");
		return 4;
	}
	printf("listening %s\n", argv[1]);
	do
		fd = accept(lfd, (struct sockaddr *)&peer, &peer_len);
	while (fd < 0 && errno == EINTR);
	if (fd < 0) {
		perror("net-seq: accept");
		return 4;
	}
	close(lfd);
	printf("accepted %u\n", ntohs(peer.sin_port));
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return 4;
		}
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];

			hash = (hash ^ (unsigned char)c) * 0x100000001b3ULL;
			if (c != '\n') {
				if (used == sizeof(line))
					return refuse(fd, "line too long");
				line[used++] = c;
				continue;
			}
			int status = handle(fd, line, used, &next, hash);

			if (status)
				return status;
			used = 0;
		}
	}
}
