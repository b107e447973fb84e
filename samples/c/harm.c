// Hostile conditions for probes: each mode calls hit() and prints what the
// program itself counted, for comparison with a native run.
//
//   harm strict N        enter SECCOMP_MODE_STRICT (read, write, exit and
//                        sigreturn only), then call hit() N times; report
//                        with write(2) and leave with exit(2)
//   harm blockedthread N a thread created with every signal blocked (as Go
//                        creates its threads) calls hit() N times
//   harm ignoretrap N    signal(SIGTRAP, SIG_IGN), hit() N times, raise(SIGTRAP)
//   harm traps N         SIGTRAP in every form while hit() is probed: a
//                        handler with SA_RESETHAND and an sa_mask, a handler
//                        that itself calls hit(), a child that changes its
//                        SIGTRAP action (the parent's must not change), the
//                        program's own int3, and a seccomp user-notification
//                        listener of its own; prints what it saw
//   harm evict T C       T threads call two functions on their own pages in a
//                        loop while the main thread drops those pages C times
//   harm storm N         50 children each fork N/50 grandchildren that wait
//                        forever, and keep forking short-lived ones; prints
//                        "ready" once all N are there
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t hit(uint64_t x) {
    sink += x;
    return x * 7 + 3;
}

__attribute__((noinline, aligned(4096))) uint64_t evict_a(uint64_t x) { return x * 3 + 1; }
__attribute__((noinline, aligned(4096))) uint64_t evict_b(uint64_t x) { return x * 5 + 2; }

static volatile int evict_stop;

static void *evict_worker(void *arg) {
    uint64_t acc = (uintptr_t)arg;
    while (!__atomic_load_n(&evict_stop, __ATOMIC_RELAXED)) acc = evict_b(evict_a(acc));
    return (void *)(uintptr_t)acc;
}

static volatile sig_atomic_t traps_seen, hits_in_handler;

static void on_trap(int sig) {
    (void)sig;
    traps_seen++;
    hits_in_handler += (hit(1) == 10);
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
    if (!strcmp(mode, "traps")) {
        printf("calls acc=%ld\n", calls(n));
        // A handler with SA_RESETHAND and a mask; it calls a probed function.
        struct sigaction sa = {.sa_handler = on_trap, .sa_flags = SA_RESETHAND};
        sigemptyset(&sa.sa_mask);
        sigaddset(&sa.sa_mask, SIGUSR1);
        sigaction(SIGTRAP, &sa, NULL);
        raise(SIGTRAP);
        struct sigaction now;
        sigaction(SIGTRAP, NULL, &now);
        printf("resethand: seen=%d in_handler=%d reset=%d\n", (int)traps_seen,
               (int)hits_in_handler, now.sa_handler == SIG_DFL);
        // The program's own int3, with a handler.
        sa.sa_flags = 0;
        sigaction(SIGTRAP, &sa, NULL);
        __asm__ volatile("int3");
        printf("own int3: seen=%d\n", (int)traps_seen);
        // A child changes its action; the parent's stays.
        pid_t c = fork();
        if (c == 0) {
            signal(SIGTRAP, SIG_IGN);
            raise(SIGTRAP);
            _exit(hit(2) == 17 ? 0 : 1);
        }
        int st;
        waitpid(c, &st, 0);
        sigaction(SIGTRAP, NULL, &now);
        printf("child: status=%d parent_handler_kept=%d\n", WEXITSTATUS(st), now.sa_handler == on_trap);
        // A seccomp user-notification listener of our own (allow all).
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {.len = 1, .filter = &allow};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
        printf("own listener: %s\n", fd >= 0 ? "ok" : strerror(errno));
        printf("calls acc=%ld\n", calls(n));
        return 0;
    }
    if (!strcmp(mode, "evict") && argc > 3) {
        long threads = n, cycles = strtol(argv[3], NULL, 0);
        pthread_t th[1024];
        for (long k = 0; k < threads && k < 1024; k++)
            pthread_create(&th[k], NULL, evict_worker, (void *)(uintptr_t)k);
        uint64_t acc = 0;
        for (long c = 0; c < cycles; c++) {
            madvise((void *)((uintptr_t)evict_a & ~(uintptr_t)4095), 4096, MADV_DONTNEED);
            madvise((void *)((uintptr_t)evict_b & ~(uintptr_t)4095), 4096, MADV_DONTNEED);
            acc = evict_b(evict_a(acc));
        }
        __atomic_store_n(&evict_stop, 1, __ATOMIC_RELAXED);
        for (long k = 0; k < threads && k < 1024; k++) pthread_join(th[k], NULL);
        printf("evict acc=%llx\n", (unsigned long long)acc);
        return 0;
    }
    if (!strcmp(mode, "storm")) {
        int pipefd[2];
        if (pipe(pipefd) != 0) return 3;
        for (int c = 0; c < 50; c++) {
            if (fork() == 0) {
                for (long i = 0; i < n / 50; i++) {
                    pid_t p = fork();
                    if (p == 0) {
                        char one = 1;
                        if (write(pipefd[1], &one, 1) != 1) _exit(1);
                        for (;;) pause();
                    }
                }
                for (;;) { /* the storm goes on */
                    pid_t p = fork();
                    if (p == 0) _exit(0);
                    if (p > 0) waitpid(p, NULL, 0);
                    hit(1);
                    usleep(2000); /* a storm, not a CPU hog for the other tests */
                }
            }
        }
        char b;
        for (long i = 0; i < n / 50 * 50; i++)
            if (read(pipefd[0], &b, 1) != 1) return 4;
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
