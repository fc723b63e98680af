/*
 * pause: the infrastructure process of a pod sandbox, for the locally built pause image
 * (hack/image/build-pause.sh). It holds the pod's namespaces open and does nothing else:
 * it sleeps until SIGTERM or SIGINT (then exits 0), and as pid 1 of the pod's pid namespace
 * it reaps every child that is reparented to it (SIGCHLD), so no zombie stays behind.
 * Written for this project; static, no libc features beyond POSIX signals.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static volatile sig_atomic_t reap;

static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

static void on_child(int sig)
{
    (void)sig;
    reap = 1;
}

static int handle(int sig, void (*fn)(int))
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = sig == SIGCHLD ? SA_NOCLDSTOP : 0;
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
    sigset_t block, old;

    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("pause (containerd-shim-pyrunc) 1.0");
        return 0;
    }
    if (getpid() != 1)
        fprintf(stderr, "pause: warning: not pid 1, children of others are not reaped here\n");
    if (handle(SIGTERM, on_stop) || handle(SIGINT, on_stop) || handle(SIGCHLD, on_child)) {
        perror("pause: sigaction");
        return 1;
    }
    /* Block the three signals outside sigsuspend so none is lost between check and sleep. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &block, &old)) {
        perror("pause: sigprocmask");
        return 1;
    }
    for (;;) {
        if (reap) {
            reap = 0;
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        }
        if (stop)
            return 0;
        sigsuspend(&old);
    }
}
