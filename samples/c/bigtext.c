/*
 * bigtext: 2048 functions of one page each, 8 MiB of text, of which a run
 * touches every STEP-th (default 10: about 10%). For the whole-program
 * benchmarks: a program with much more text than it uses.
 *
 *   bigtext [STEP]
 *   bigtext --outlive N   the first process exits after 100 ms; its child
 *                         forks N grandchildren which wait 700 ms, every
 *                         other one drops the whole text (MADV_DONTNEED),
 *                         and call all 2048 functions; the child prints
 *                         how many computed the right answer
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, aligned(4096)))
#define F(n) NOINLINE uint64_t big_##n(uint64_t x) { return x * 0x##n##ULL + 1; }
#define D16(p) F(p##0) F(p##1) F(p##2) F(p##3) F(p##4) F(p##5) F(p##6) F(p##7) \
               F(p##8) F(p##9) F(p##a) F(p##b) F(p##c) F(p##d) F(p##e) F(p##f)
#define D256(p) D16(p##0) D16(p##1) D16(p##2) D16(p##3) D16(p##4) D16(p##5) D16(p##6) D16(p##7) \
                D16(p##8) D16(p##9) D16(p##a) D16(p##b) D16(p##c) D16(p##d) D16(p##e) D16(p##f)
D256(0) D256(1) D256(2) D256(3) D256(4) D256(5) D256(6) D256(7)

#define T(n) big_##n,
#define T16(p) T(p##0) T(p##1) T(p##2) T(p##3) T(p##4) T(p##5) T(p##6) T(p##7) \
               T(p##8) T(p##9) T(p##a) T(p##b) T(p##c) T(p##d) T(p##e) T(p##f)
#define T256(p) T16(p##0) T16(p##1) T16(p##2) T16(p##3) T16(p##4) T16(p##5) T16(p##6) T16(p##7) \
                T16(p##8) T16(p##9) T16(p##a) T16(p##b) T16(p##c) T16(p##d) T16(p##e) T16(p##f)
static uint64_t (*const table[2048])(uint64_t) = {
    T256(0) T256(1) T256(2) T256(3) T256(4) T256(5) T256(6) T256(7)
};

static uint64_t call_all(void) {
    uint64_t acc = 1;
    for (int i = 0; i < 2048; i++) acc = table[i](acc);
    return acc;
}

static int outlive(int n) {
    if (fork() != 0) {
        usleep(100 * 1000);
        return 0; /* the first process ends while its descendants work */
    }
    uint64_t want = call_all();
    uintptr_t lo = (uintptr_t)table[0] & ~(uintptr_t)4095;
    uintptr_t hi = ((uintptr_t)table[2047] & ~(uintptr_t)4095) + 4096;
    int ok = 0;
    pid_t kids[1024];
    for (int i = 0; i < n && i < 1024; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            usleep(700 * 1000);
            if (i % 2) madvise((void *)lo, hi - lo, MADV_DONTNEED);
            _exit(call_all() == want ? 0 : 1);
        }
    }
    for (int i = 0; i < n && i < 1024; i++) {
        int st;
        if (kids[i] > 0 && waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++;
    }
    printf("outlive ok=%d of %d\n", ok, n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "--outlive")) return outlive(atoi(argv[2]));
    int step = argc > 1 ? atoi(argv[1]) : 10;
    if (step < 1) step = 1;
    uint64_t acc = 1, calls = 0;
    for (int i = 0; i < 2048; i += step) {
        acc = table[i](acc);
        calls++;
    }
    printf("bigtext calls=%llu acc=%llx\n", (unsigned long long)calls, (unsigned long long)acc);
    return 0;
}
