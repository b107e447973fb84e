/* Calls to time (--latency): each mode says what it did itself, for the
 * tests to compare with what the tool measured.
 *
 *   latency sleeps A B      nap(2) A times then nap(20) B times (nap sleeps
 *                           that many ms); prints "naps=A+B"
 *   latency fib N           fib(N), recursive; prints "fib=F calls=C"
 *   latency longjmp N D     N times: dive(D) recurses D deep, and the deepest
 *                           longjmps back out past all of them; prints
 *                           "dives=N*D jumps=N"
 *   latency deep D          dive2(D) recurses D deep and returns; "calls=D+1"
 *   latency threads T N     T threads call work() N times each; "calls=T*N"
 *   latency fork            forked() forks inside; parent and child each
 *                           return from it; each prints "pid=P role=R"
 *   latency tail N          tailer(i) N times; tailer ends in a tail call of
 *                           work (a jmp); prints "calls=N"
 *   latency pexit T         T threads each call quitter(), which ends the
 *                           thread (pthread_exit) inside; "exited=T"
 *   latency midjump N       N times: climb(5) recurses through climb(3),
 *                           which calls catcher(2) (a setjmp), on to climb(0),
 *                           which longjmps back into catcher: climb(2..0) are
 *                           left, catcher and climb(3..5) return, climb(d)
 *                           returning d - 2; prints "returned=3*N left=3*N"
 *   latency names N         name_of(i) for i < N, each returning a string
 *                           (or NULL, or one of 80 bytes); prints each as
 *                           "name=S" ("name=(null)" for NULL)
 *   latency loop N          work(i) N times, timed: "ns_per_call=NS
 *                           cpu_ns_per_call=NS calls=N" (for the benchmarks)
 *   latency tscloop N       the same, each call between two reads of the
 *                           time stamp counter (rdtsc), as a timer of calls
 *                           must read it: the floor of timing a call
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static volatile uint64_t sink;
static uint64_t calls;

NOINLINE void nap(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

NOINLINE uint64_t fib(int n)
{
    calls++;
    if (n < 2) return (uint64_t)n;
    uint64_t r = fib(n - 1) + fib(n - 2);
    __asm__ volatile("" : "+r"(r));
    return r;
}

static jmp_buf back;

NOINLINE void dive(int d)
{
    calls++;
    if (d <= 0) return;
    if (d == 1) longjmp(back, 1);
    dive(d - 1);
    sink++;
}

NOINLINE uint64_t dive2(int d)
{
    calls++;
    if (d == 0) return 0;
    uint64_t r = dive2(d - 1) + 1;
    __asm__ volatile("" : "+r"(r));
    return r;
}

NOINLINE uint64_t work(uint64_t x)
{
    uint64_t r = x * 2654435761u;
    __asm__ volatile("" : "+r"(r));
    return r >> 3;
}

static uint64_t per_thread;

static void *worker(void *arg)
{
    uint64_t acc = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < per_thread; i++) acc += work(acc + i);
    sink += acc;
    return NULL;
}

static uint64_t tails;

NOINLINE uint64_t tailer(uint64_t x)
{
    tails += x;
    return work(x * 3 + 1);
}

static jmp_buf mid;

NOINLINE uint64_t climb(int d);

NOINLINE uint64_t catcher(int d)
{
    if (setjmp(mid) == 0) climb(d);
    return 0;
}

NOINLINE uint64_t climb(int d)
{
    calls++;
    if (d == 0) longjmp(mid, 1);
    uint64_t r = (d == 3 ? catcher(d - 1) : climb(d - 1)) + 1;
    __asm__ volatile("" : "+r"(r));
    return r;
}

static const char *const names[] = {
    "zero", "one \"quoted\"", NULL,
    "eighty bytes: 0123456789012345678901234567890123456789012345678901234567890123456",
};

NOINLINE const char *name_of(uint64_t i)
{
    const char *n = names[i % 4];
    __asm__ volatile("" : "+r"(n));
    return n;
}

NOINLINE void quitter(void)
{
    pthread_exit(NULL);
}

static void *quitting(void *arg)
{
    (void)arg;
    quitter();
    return NULL;
}

NOINLINE int forked(void)
{
    fflush(stdout);
    pid_t c = fork();
    sink++;
    return c;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "sleeps")) {
        int a = atoi(argv[2]), b = atoi(argv[3]);
        for (int i = 0; i < a; i++) nap(2);
        for (int i = 0; i < b; i++) nap(20);
        printf("naps=%d\n", a + b);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "fib")) {
        uint64_t f = fib(atoi(argv[2]));
        printf("fib=%llu calls=%llu\n", (unsigned long long)f, (unsigned long long)calls);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "longjmp")) {
        int n = atoi(argv[2]), d = atoi(argv[3]), jumps = 0;
        for (int i = 0; i < n; i++) {
            if (setjmp(back) == 0) dive(d);
            else jumps++;
        }
        printf("dives=%llu jumps=%d\n", (unsigned long long)calls, jumps);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "deep")) {
        uint64_t r = dive2(atoi(argv[2]));
        printf("depth=%llu calls=%llu\n", (unsigned long long)r, (unsigned long long)calls);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "threads")) {
        int t = atoi(argv[2]);
        per_thread = strtoull(argv[3], NULL, 0);
        pthread_t th[64];
        if (t > 64) t = 64;
        for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i);
        for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
        printf("calls=%llu\n", (unsigned long long)t * per_thread);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "fork")) {
        int c = forked();
        if (c == 0) {
            printf("pid=%d role=child\n", getpid());
            return 0;
        }
        int st;
        waitpid(c, &st, 0);
        printf("pid=%d role=parent child_status=%d\n", getpid(), st);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "tail")) {
        uint64_t n = strtoull(argv[2], NULL, 0), acc = 0;
        for (uint64_t i = 0; i < n; i++) acc += tailer(i);
        sink += acc;
        printf("calls=%llu\n", (unsigned long long)n);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "pexit")) {
        int t = atoi(argv[2]);
        pthread_t th[64];
        if (t > 64) t = 64;
        for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, quitting, NULL);
        for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
        printf("exited=%d\n", t);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "midjump")) {
        int n = atoi(argv[2]);
        uint64_t got = 0;
        for (int i = 0; i < n; i++) got += climb(5);
        printf("returned=%d left=%d sum=%llu\n", 3 * n, 3 * n, (unsigned long long)got);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "names")) {
        uint64_t n = strtoull(argv[2], NULL, 0);
        for (uint64_t i = 0; i < n; i++) {
            const char *s = name_of(i);
            printf("name=%s\n", s ? s : "(null)");
        }
        return 0;
    }
    if (argc >= 3 && (!strcmp(argv[1], "loop") || !strcmp(argv[1], "tscloop"))) {
        uint64_t n = strtoull(argv[2], NULL, 0), acc = 0, ticks = 0;
        int tsc = !strcmp(argv[1], "tscloop");
        struct timespec t0, t1, c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (tsc) {
            for (uint64_t i = 0; i < n; i++) {
                uint64_t a = __builtin_ia32_rdtsc();
                acc += work(acc + i);
                ticks += __builtin_ia32_rdtsc() - a;
            }
        } else {
            for (uint64_t i = 0; i < n; i++) acc += work(acc + i);
        }
        sink += ticks;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
        double cpu = (double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec);
        printf("ns_per_call=%.2f cpu_ns_per_call=%.2f calls=%llu acc=%llu\n", ns / (double)n, cpu / (double)n,
               (unsigned long long)n, (unsigned long long)acc);
        return 0;
    }
    fprintf(stderr, "usage: latency sleeps A B | fib N | longjmp N D | deep D | threads T N | fork | tail N | pexit T | midjump N | names N | loop N | tscloop N\n");
    return 2;
}
