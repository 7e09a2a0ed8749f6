/* The replay differential test's workload: runs the syscalls named on its command line, in order, so the
 * test knows every call it made. Commands: open:P, creat:P, pread:P:COUNT:OFF, conn4:IP:PORT,
 * conn6:IP:PORT, unlink:P (unlinkat), fork (the child runs the rest, the parent waits and stops),
 * exec:P (execs P with the rest), wait (reads a byte from stdin), mark:S:N (calls work_mark(S, N)) and
 * buf:S (calls work_buf(S, strlen(S))), two functions for uprobes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline, used)) long work_mark(const char *s, long n)
{
	__asm__ volatile("" ::: "memory");
	return (long)strlen(s) + n;
}

__attribute__((noinline, used)) long work_buf(const char *buf, size_t len)
{
	__asm__ volatile("" ::: "memory");
	return (long)len + buf[0];
}

static void conn(int fam, const char *spec)
{
	char ip[64];
	const char *colon = strrchr(spec, ':');
	size_t n = colon ? (size_t)(colon - spec) : 0;
	int s;

	if (!colon || n >= sizeof(ip))
		return;
	memcpy(ip, spec, n);
	ip[n] = 0;
	s = socket(fam, SOCK_STREAM, 0);
	if (s < 0)
		return;
	if (fam == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};

		inet_pton(AF_INET, ip, &a.sin_addr);
		connect(s, (struct sockaddr *)&a, sizeof(a));
	} else {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(colon + 1))};

		inet_pton(AF_INET6, ip, &a.sin6_addr);
		connect(s, (struct sockaddr *)&a, sizeof(a));
	}
	close(s);
}

int main(int argc, char **argv)
{
	static char buf[8192];

	for (int i = 1; i < argc; i++) {
		char *a = argv[i];

		if (!strncmp(a, "open:", 5)) {
			int fd = open(a + 5, O_RDONLY);

			if (fd >= 0)
				close(fd);
		} else if (!strncmp(a, "creat:", 6)) {
			int fd = open(a + 6, O_WRONLY | O_CREAT, 0644);

			if (fd >= 0)
				close(fd);
		} else if (!strncmp(a, "pread:", 6)) {
			char *p = strdup(a + 6), *off = strrchr(p, ':'), *cnt;

			*off++ = 0;
			cnt = strrchr(p, ':');
			*cnt++ = 0;
			int fd = open(p, O_RDONLY);

			if (fd >= 0) {
				pread(fd, buf, (size_t)atol(cnt), atol(off));
				close(fd);
			}
			free(p);
		} else if (!strncmp(a, "conn4:", 6)) {
			conn(AF_INET, a + 6);
		} else if (!strncmp(a, "conn6:", 6)) {
			conn(AF_INET6, a + 6);
		} else if (!strncmp(a, "unlink:", 7)) {
			syscall(SYS_unlinkat, AT_FDCWD, a + 7, 0);
		} else if (!strcmp(a, "fork")) {
			pid_t c = fork();

			if (c > 0) {
				waitpid(c, NULL, 0);
				return 0;
			}
		} else if (!strncmp(a, "exec:", 5)) {
			argv[i] = a + 5;
			execv(a + 5, argv + i);
			return 127;
		} else if (!strncmp(a, "mark:", 5)) {
			char *p = strdup(a + 5), *n = strrchr(p, ':');

			*n++ = 0;
			work_mark(p, atol(n));
			free(p);
		} else if (!strncmp(a, "buf:", 4)) {
			work_buf(a + 4, strlen(a + 4));
		} else if (!strcmp(a, "wait")) {
			char c;

			if (read(0, &c, 1) != 1)
				return 2;
		}
	}
	return 0;
}
