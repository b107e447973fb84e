/*
 * events: calls ev() with known arguments, so that a trace's events can be
 * checked against what the program itself says.
 *
 *   events threads T N  T threads each call ev(i, -i, t, 0xdead0000 + i,
 *                       i * 3, ~i) for i = 0..N-1, each printing
 *                       "thread=t tid=TID" (its own gettid())
 *   events fork N       calls ev(i, 1, 0, …) N times, forks a child that
 *                       calls ev(i, 2, 0, …) N times; each prints
 *                       "pid=PID role=parent|child"
 *   events crash N      calls ev(i, 3, 0, …) N times, then dies of SIGSEGV
 *   events signal N     calls ev(i, 4, 0, …) N times under a 50 µs interval
 *                       timer whose SIGALRM handler calls ev(-1, 5, …);
 *                       prints how many calls the handler made
 *   events clock N      prints CLOCK_MONOTONIC (ns) just before each of N
 *                       calls ev(i, 6, 0, …): "before=NS"
 *   events strings N    calls sv(a, b, i) N times over five pairs of
 *                       strings: "alpha" and one with a quote, a newline
 *                       and a tab; NULL and an unmapped address (0x10); 70
 *                       digits and ""; the 3 bytes "end" that end a mapping
 *                       (no NUL: the next page is unmapped) and "x"; a
 *                       non-UTF-8 byte and "ok". sv reads neither string.
 *   events hitloop6 N   calls ev(i, -i, acc, 0xdead0000 + i, i * 3, ~i) N
 *                       times on one thread and prints the nanoseconds per
 *                       call of the loop, in wall time (CLOCK_MONOTONIC) and
 *                       in the thread's CPU time (not counting time it waits
 *                       for a CPU): "ns_per_call=NS cpu_ns_per_call=NS
 *                       calls=N acc=… minflt=K" (for the benchmarks; K: the
 *                       page faults the loop took)
 *   events hitloopstr N the same, calling sv("alpha", "a string of 24 bytes....",
 *                       i) N times (two strings for `str` arguments)
 *   events hitpace6 N R calls ev() as hitloop6 does, N times, paced at R calls
 *                       a second (call i waits, spinning, until i / R seconds
 *                       after the first): a steady stream of events for
 *                       the benchmarks' drain rate; prints "rate=CALLS_PER_S
 *                       calls=N acc=…", the rate achieved
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

volatile uint64_t sink;

NOINLINE uint64_t ev(int64_t a, int64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f)
{
    uint64_t r = (uint64_t)a ^ (uint64_t)b ^ c ^ d ^ e ^ f;
    __asm__ volatile("" : "+r"(r));
    return r;
}

NOINLINE uint64_t sv(const char *a, const char *b, uint64_t i)
{
    uint64_t r = (uint64_t)(uintptr_t)a ^ (uint64_t)(uintptr_t)b ^ i;
    __asm__ volatile("" : "+r"(r));
    return r;
}

static uint64_t n;

static void *worker(void *p)
{
    uint64_t t = (uint64_t)(uintptr_t)p;
    printf("thread=%llu tid=%d\n", (unsigned long long)t, gettid());
    fflush(stdout);
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) acc += ev((int64_t)i, -(int64_t)i, t, 0xdead0000 + i, i * 3, ~i);
    sink = acc;
    return NULL;
}

static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
    (void)sig;
    sink += ev(-1, 5, 0, 0, 0, 0);
    handled++;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: events threads T N | fork N | crash N | signal N | clock N | strings N | hitloop6 N | hitloopstr N | hitpace6 N R\n");
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "threads") && argc == 4) {
        uint64_t t = strtoull(argv[2], NULL, 0);
        n = strtoull(argv[3], NULL, 0);
        pthread_t th[64];
        if (t > 64) t = 64;
        for (uint64_t i = 0; i < t; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i);
        for (uint64_t i = 0; i < t; i++) pthread_join(th[i], NULL);
        return 0;
    }
    n = strtoull(argv[2], NULL, 0);
    if (!strcmp(mode, "fork")) {
        for (uint64_t i = 0; i < n; i++) sink += ev((int64_t)i, 1, 0, 0, 0, 0);
        fflush(stdout);
        pid_t c = fork();
        if (c == 0) {
            for (uint64_t i = 0; i < n; i++) sink += ev((int64_t)i, 2, 0, 0, 0, 0);
            printf("pid=%d role=child\n", getpid());
            return 0;
        }
        int st;
        waitpid(c, &st, 0);
        printf("pid=%d role=parent\n", getpid());
        return 0;
    }
    if (!strcmp(mode, "crash")) {
        for (uint64_t i = 0; i < n; i++) sink += ev((int64_t)i, 3, 0, 0, 0, 0);
        printf("pid=%d crashing\n", getpid());
        fflush(stdout);
        *(volatile int *)(uintptr_t)sink = 0; /* sink is small: unmapped */
        return 0;
    }
    if (!strcmp(mode, "signal")) {
        signal(SIGALRM, on_alarm);
        struct itimerval it = {{0, 50}, {0, 50}};
        setitimer(ITIMER_REAL, &it, NULL);
        for (uint64_t i = 0; i < n; i++) sink += ev((int64_t)i, 4, 0, 0, 0, 0);
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        printf("handled=%d\n", (int)handled);
        return 0;
    }
    if (!strcmp(mode, "clock")) {
        for (uint64_t i = 0; i < n; i++) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            printf("before=%llu\n", (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
            sink += ev((int64_t)i, 6, 0, 0, 0, 0);
        }
        return 0;
    }
    if (!strcmp(mode, "strings")) {
        char *page = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) return 3;
        munmap(page + 4096, 4096);
        memcpy(page + 4096 - 3, "end", 3);
        const char *pairs[5][2] = {
            {"alpha", "with \"quote\"\n\tand tab"},
            {NULL, (const char *)0x10},
            {"0123456789012345678901234567890123456789012345678901234567890123456789", ""},
            {page + 4096 - 3, "x"},
            {"\xff", "ok"},
        };
        for (uint64_t i = 0; i < n; i++) sink += sv(pairs[i % 5][0], pairs[i % 5][1], i);
        printf("strings=%llu\n", (unsigned long long)n);
        return 0;
    }
    if (!strcmp(mode, "hitloop6") || !strcmp(mode, "hitloopstr")) {
        int strings = !strcmp(mode, "hitloopstr");
        static const char alpha[] = "alpha", beta[] = "a string of 24 bytes....";
        uint64_t acc = 0;
        struct timespec t0, t1, c0, c1;
        struct rusage u0, u1;
        getrusage(RUSAGE_THREAD, &u0);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (strings)
            for (uint64_t i = 0; i < n; i++) acc += sv(alpha, beta, i);
        else
            for (uint64_t i = 0; i < n; i++) acc += ev((int64_t)i, -(int64_t)i, acc, 0xdead0000 + i, i * 3, ~i);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        getrusage(RUSAGE_THREAD, &u1);
        double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
        double cpu = (double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec);
        printf("ns_per_call=%.2f cpu_ns_per_call=%.2f calls=%llu acc=%llu minflt=%ld\n", ns / (double)n,
               cpu / (double)n, (unsigned long long)n, (unsigned long long)acc, u1.ru_minflt - u0.ru_minflt);
        return 0;
    }
    if (!strcmp(mode, "hitpace6") && argc == 4) {
        double period = 1e9 / strtod(argv[3], NULL);
        uint64_t acc = 0;
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double now = 0;
        for (uint64_t i = 0; i < n; i++) {
            while (now < (double)i * period) {
                clock_gettime(CLOCK_MONOTONIC, &t);
                now = (double)(t.tv_sec - t0.tv_sec) * 1e9 + (double)(t.tv_nsec - t0.tv_nsec);
            }
            acc += ev((int64_t)i, -(int64_t)i, acc, 0xdead0000 + i, i * 3, ~i);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        now = (double)(t.tv_sec - t0.tv_sec) * 1e9 + (double)(t.tv_nsec - t0.tv_nsec);
        printf("rate=%.0f calls=%llu acc=%llu\n", (double)n / now * 1e9, (unsigned long long)n, (unsigned long long)acc);
        return 0;
    }
    fprintf(stderr, "usage: events threads T N | fork N | crash N | signal N | clock N | strings N | hitloop6 N | hitloopstr N | hitpace6 N R\n");
    return 2;
}
