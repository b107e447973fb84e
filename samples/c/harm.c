// Hostile conditions for probes: each mode calls hit() and prints what the
// program itself counted, for comparison with a native run.
//
//   harm strict N        enter SECCOMP_MODE_STRICT (read, write, exit and
//                        sigreturn only), then call hit() N times; report
//                        with write(2) and leave with exit(2)
//   harm blockedthread N a thread created with every signal blocked (as Go
//                        creates its threads) calls hit() N times
//   harm ignoretrap N    signal(SIGTRAP, SIG_IGN), hit() N times, raise(SIGTRAP)
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hit(uint64_t x) {
    sink += x;
    return x * 7 + 3;
}

static long calls(long n) {
    uint64_t acc = 0;
    for (long i = 0; i < n; i++) acc += hit((uint64_t)i);
    return (long)(acc % 1000003);
}

static void *thread_main(void *arg) {
    long n = (long)(intptr_t)arg;
    printf("thread acc=%ld\n", calls(n));
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    long n = argc > 2 ? strtol(argv[2], NULL, 0) : 10;
    if (!strcmp(mode, "strict")) {
        fflush(stdout);
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) return 3;
        long acc = calls(n);
        char buf[64];
        int len = snprintf(buf, sizeof buf, "strict acc=%ld calls=%ld\n", acc, n);
        if (write(1, buf, (size_t)len) != len) syscall(SYS_exit, 4);
        syscall(SYS_exit, 0);
    }
    if (!strcmp(mode, "blockedthread")) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t t;
        pthread_create(&t, NULL, thread_main, (void *)(intptr_t)n);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_join(t, NULL);
        return 0;
    }
    if (!strcmp(mode, "ignoretrap")) {
        signal(SIGTRAP, SIG_IGN);
        printf("acc=%ld\n", calls(n));
        fflush(stdout);
        raise(SIGTRAP);
        printf("survived SIGTRAP\n");
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
