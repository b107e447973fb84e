/*
 * nodump.c - a program that makes itself non-dumpable, as ssh-agent and
 * gpg-agent do, then installs its own SIGTRAP handler.
 *
 *   nodump N [fork]
 *   nodump exec N [fork]
 *
 * Sets PR_SET_DUMPABLE 0, installs a SIGTRAP handler and reads it back,
 * calls the non-inlined function work() N times, executes int3 once and
 * raises SIGTRAP once (both must reach the handler), and prints what it saw.
 * With "fork", the same runs again in a child forked after the prctl (it is
 * born non-dumpable). "exec" first execs itself (argv[0]) with the rest.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t traps;
static unsigned long acc = 7;

static void on_trap(int sig)
{
    (void)sig;
    traps++;
}

__attribute__((noinline)) unsigned long work(unsigned long x)
{
    __asm__ volatile("");
    return x * 31 + 1;
}

static void run(const char *who, unsigned long n)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_trap;
    traps = 0;
    if (sigaction(SIGTRAP, &sa, &old) != 0) {
        printf("%s: sigaction failed\n", who);
        fflush(stdout);
        return;
    }
    sigaction(SIGTRAP, NULL, &old);
    printf("%s: dumpable=%d installed=%s\n", who, prctl(PR_GET_DUMPABLE),
           old.sa_handler == on_trap ? "ours" : "other");
    for (unsigned long i = 0; i < n; i++)
        acc = work(acc) & 0xffffffff;
    __asm__ volatile("int3");
    raise(SIGTRAP);
    printf("%s: work=%lu acc=%lx traps=%d\n", who, n, acc, (int)traps);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: nodump N [fork]\n");
        return 2;
    }
    if (!strcmp(argv[1], "exec")) {
        execv(argv[0], argv + 1);
        perror("execv");
        return 1;
    }
    unsigned long n = strtoul(argv[1], NULL, 10);
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        perror("prctl");
        return 1;
    }
    if (argc > 2 && !strcmp(argv[2], "fork")) {
        pid_t pid = fork();
        if (pid == 0) {
            run("child", n);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        printf("child status=%d\n", st);
    }
    run("main", n);
    return 0;
}
