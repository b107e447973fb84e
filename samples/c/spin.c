/*
 * spin.c - a tiny program for signal and timing tests.
 *
 *   spin [N] [--sigint-exit]
 *
 * Calls the non-inlined function tick(i) N times (default 1000000) and prints
 * "ticks=N acc=<hex>". With --sigint-exit it installs a SIGINT handler that
 * prints "caught SIGINT" and exits 0, and after ticking waits in pause()
 * for the signal.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Global state so every tick() call has an effect the compiler must keep. */
static uint64_t acc = 0x9e3779b97f4a7c15ULL;

__attribute__((noinline)) static void tick(unsigned long i)
{
    acc = (acc ^ i) * 0x100000001b3ULL;
}

static void on_sigint(int sig)
{
    static const char msg[] = "caught SIGINT\n";
    (void)sig;
    /* Only async-signal-safe calls here. */
    if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0)
        _exit(1);
    _exit(0);
}

int main(int argc, char **argv)
{
    unsigned long n = 1000000;
    int sigint_exit = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--sigint-exit") == 0) {
            sigint_exit = 1;
        } else {
            char *end;
            errno = 0;
            n = strtoul(argv[i], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i] || argv[i][0] == '-') {
                fprintf(stderr, "usage: spin [N] [--sigint-exit]\n");
                return 2;
            }
        }
    }

    if (sigint_exit) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, NULL) != 0) {
            fprintf(stderr, "sigaction: %s\n", strerror(errno));
            return 3;
        }
    }

    for (unsigned long i = 0; i < n; i++)
        tick(i);
    printf("ticks=%lu acc=%016llx\n", n, (unsigned long long)acc);
    fflush(stdout);

    if (sigint_exit)
        for (;;)
            pause();
    return 0;
}
