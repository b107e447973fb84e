/*
 * probed: functions to put probes on, each called a number of times the
 * program counts and prints itself, so tests can compare probe hits with
 * ground truth that is not uprobe-exec's.
 *
 *   probed basic N        counted() N times
 *   probed threads T N    T threads, each calls counted_mt() N times, all
 *                         released at once onto cold pages
 *   probed fib N          fib(N), recursive; prints the number of calls
 *   probed signal N       raises SIGUSR1 N times; the handler calls in_handler()
 *   probed fork N         the child calls after_fork() N times (first call ever)
 *   probed dontneed N     calls dropped() N times, dropping its page each time
 *   probed sites N        calls every hand-written site function N times
 *   probed trapown N      installs its own SIGTRAP handler, calls counted()
 *                         N times, executes int3 N times and raises SIGTRAP once
 *   probed blocked N      blocks SIGTRAP, then calls counted() N times
 *   probed mangled N      calls three functions with C++, Rust legacy and
 *                         Rust v0 mangled names N times each
 *   probed forktree K N   forks K children; each calls after_fork() N times
 *   probed exitthread N   counted() N times, then a second thread calls exit(7)
 *   probed abort N        counted() N times, then abort()
 *   probed segv N         counted() N times, then a write through NULL
 *   probed pause N        counted() N times, prints "ready", then waits for a signal
 *   probed evict C        4 threads call evict_a/evict_b in a loop while the main
 *                         thread drops their pages C times, calling both after each drop
 *   probed selfread N     writes the first 64 bytes of selfread_fn() with write(2)
 *   probed defeat N       calls the defeat_* functions (built to defeat naive
 *                         jump patching) N times each
 *   probed hitloop K N    calls hit_K() N times (K: push, mov, nop5, trap) and
 *                         prints the nanoseconds per call (for the benchmarks;
 *                         hit_trap starts with int3: run it only under a tracer)
 *   probed hitloop_mt K T N  T threads, released at once, each calls hit_K() N
 *                         times and times its own loop in thread CPU time (not
 *                         counting time it waits for a CPU); prints hit_K=T*N
 *                         and the mean ns per call per thread
 *   probed hammer K T N   the same without the time (its output is the same
 *                         natively and probed)
 */
#include <time.h>
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static volatile uint64_t sink;

NOINLINE uint64_t counted(uint64_t x) { sink += x; return x * 3 + 1; }

NOINLINE __attribute__((aligned(4096))) uint64_t counted_mt(uint64_t x) { return x * 5 + 7; }

static uint64_t fib_calls;
/* O0: at -O2 gcc turns one of the two recursive calls into a loop. */
NOINLINE __attribute__((optimize("O0"))) uint64_t fib(uint64_t n) {
    fib_calls++;
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

static volatile sig_atomic_t handled;
NOINLINE void in_handler(void) { handled++; }
static void on_usr1(int sig) { (void)sig; in_handler(); }

NOINLINE __attribute__((aligned(4096))) uint64_t after_fork(uint64_t x) { return x ^ 0x5a5a; }

NOINLINE __attribute__((aligned(4096))) uint64_t dropped(uint64_t x) { return x + 11; }

/* Hand-written sites, in Intel syntax, at offsets the tests name:
 *   site_lea+4    lea rax, [rip+site_global]   (after endbr64)
 *   site_mov      mov rax, [rip+site_global]
 *   site_call+1   call site_callee             (after push rbx)
 *   site_jcc+2    jz                           (taken when edi == 0)
 *   site_jmp      jmp
 *   site_push     push rbp
 *   site_adj, site_adj+2   two adjacent instructions
 *   site_straddle          a 5-byte instruction that crosses a page boundary
 *   many_0 … many_31       32 functions on one page
 */
uint64_t site_global = 40;
uint64_t site_lea(void);
uint64_t site_mov(void);
uint64_t site_call(uint64_t);
uint64_t site_jcc(uint64_t);
uint64_t site_jmp(void);
uint64_t site_push(uint64_t);
uint64_t site_adj(uint64_t);
uint64_t site_straddle(uint64_t);
NOINLINE uint64_t site_callee(uint64_t x) { return x * 7; }

/* Benchmark sites: the first instruction is what the kernel's uprobes
 * treat differently: push (emulated), mov (single-stepped), nop5 (optimized
 * into a call where the kernel supports it), int3 (the ptrace baseline). */
uint64_t hit_push(uint64_t);
uint64_t hit_mov(uint64_t);
uint64_t hit_nop5(uint64_t);
uint64_t hit_trap(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl hit_push\n.type hit_push,@function\n"
        "hit_push:\n push rbp\n mov rbp, rsp\n lea rax, [rdi + 1]\n pop rbp\n ret\n.size hit_push, .-hit_push\n"
        ".p2align 4\n.globl hit_mov\n.type hit_mov,@function\n"
        "hit_mov:\n mov rax, rdi\n add rax, 1\n ret\n.size hit_mov, .-hit_mov\n"
        ".p2align 4\n.globl hit_nop5\n.type hit_nop5,@function\n"
        "hit_nop5:\n .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n lea rax, [rdi + 1]\n ret\n.size hit_nop5, .-hit_nop5\n"
        ".p2align 4\n.globl hit_trap\n.type hit_trap,@function\n"
        "hit_trap:\n int3\n lea rax, [rdi + 1]\n ret\n.size hit_trap, .-hit_trap\n"
        ".att_syntax prefix\n");

/* Functions built to defeat naive jump patching:
 *   defeat_loop   a loop branches back to entry+1 (inside any jump's patch,
 *                 even a 2-byte one); the `sub edi, 1` there (81 ef 01 00
 *                 00 00) would land a punned jump inside the program
 *   defeat_short  shorter than 5 bytes
 *   defeat_table  dispatches through a relative jump table (indirect jmp),
 *                 which is read whole: a jump fits at its entry
 *   defeat_tail   a tail call within the first 5 bytes
 *   defeat_flags  flags live across +3: cmp before it, jl after it */
uint64_t defeat_loop(uint64_t);
uint64_t defeat_short(uint64_t);
uint64_t defeat_table(uint64_t);
uint64_t defeat_tail(uint64_t);
uint64_t defeat_flags(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl defeat_loop\n.type defeat_loop,@function\n"
        "defeat_loop:\n cld\n3:\n .byte 0x81, 0xef, 0x01, 0x00, 0x00, 0x00\n jg 3b\n lea eax, [rdi + 7]\n ret\n.size defeat_loop, .-defeat_loop\n"
        ".p2align 4\n.globl defeat_short\n.type defeat_short,@function\n"
        "defeat_short:\n lea eax, [rdi + 1]\n ret\n.size defeat_short, .-defeat_short\n"
        ".p2align 4\n.globl defeat_table\n.type defeat_table,@function\n"
        "defeat_table:\n and edi, 3\n lea rax, [rip + 5f]\n movsxd rdx, dword ptr [rax + rdi * 4]\n add rax, rdx\n jmp rax\n"
        "6:\n mov eax, 10\n ret\n7:\n mov eax, 20\n ret\n8:\n mov eax, 30\n ret\n9:\n mov eax, 40\n ret\n"
        ".size defeat_table, .-defeat_table\n"
        ".section .rodata\n.p2align 2\n5:\n .long 6b - 5b\n .long 7b - 5b\n .long 8b - 5b\n .long 9b - 5b\n.text\n"
        ".p2align 4\n.globl defeat_tail\n.type defeat_tail,@function\n"
        "defeat_tail:\n mov eax, edi\n jmp site_callee\n.size defeat_tail, .-defeat_tail\n"
        ".p2align 4\n.globl defeat_flags\n.type defeat_flags,@function\n"
        "defeat_flags:\n cmp edi, 5\n mov eax, 7\n jl 4f\n mov eax, 9\n4:\n ret\n.size defeat_flags, .-defeat_flags\n"
        ".att_syntax prefix\n");

#define MANY(k) "many_" #k ":\n lea eax, [rdi + " #k "]\n ret\n .p2align 4\n"
__asm__(
    ".intel_syntax noprefix\n"
    ".text\n"
    ".p2align 4\n"
    ".globl site_lea\n.type site_lea,@function\n"
    "site_lea:\n endbr64\n lea rax, [rip + site_global]\n mov rax, [rax]\n ret\n"
    ".size site_lea, .-site_lea\n"
    ".p2align 4\n"
    ".globl site_mov\n.type site_mov,@function\n"
    "site_mov:\n mov rax, [rip + site_global]\n add rax, 2\n ret\n"
    ".size site_mov, .-site_mov\n"
    ".p2align 4\n"
    ".globl site_call\n.type site_call,@function\n"
    "site_call:\n push rbx\n call site_callee\n pop rbx\n ret\n"
    ".size site_call, .-site_call\n"
    ".p2align 4\n"
    ".globl site_jcc\n.type site_jcc,@function\n"
    "site_jcc:\n test edi, edi\n jz 1f\n mov eax, 1\n ret\n1:\n mov eax, 2\n ret\n"
    ".size site_jcc, .-site_jcc\n"
    ".p2align 4\n"
    ".globl site_jmp\n.type site_jmp,@function\n"
    "site_jmp:\n jmp 2f\n ud2\n2:\n mov eax, 3\n ret\n"
    ".size site_jmp, .-site_jmp\n"
    ".p2align 4\n"
    ".globl site_push\n.type site_push,@function\n"
    "site_push:\n push rbp\n mov rbp, rsp\n lea rax, [rdi + 9]\n pop rbp\n ret\n"
    ".size site_push, .-site_push\n"
    ".p2align 4\n"
    ".globl site_adj\n.type site_adj,@function\n"
    "site_adj:\n mov eax, edi\n add eax, 1\n ret\n"
    ".size site_adj, .-site_adj\n"
    /* Put site_straddle two bytes before a page boundary. */
    ".p2align 12\n"
    ".skip 4094, 0xcc\n"
    ".globl site_straddle\n.type site_straddle,@function\n"
    "site_straddle:\n mov eax, 0x12345678\n add eax, edi\n ret\n"
    ".size site_straddle, .-site_straddle\n"
    ".p2align 12\n"
    ".globl many_0\n"
    MANY(0) MANY(1) MANY(2) MANY(3) MANY(4) MANY(5) MANY(6) MANY(7)
    MANY(8) MANY(9) MANY(10) MANY(11) MANY(12) MANY(13) MANY(14) MANY(15)
    MANY(16) MANY(17) MANY(18) MANY(19) MANY(20) MANY(21) MANY(22) MANY(23)
    MANY(24) MANY(25) MANY(26) MANY(27) MANY(28) MANY(29) MANY(30) MANY(31)
    ".att_syntax prefix\n");

#define DECL(k) uint64_t many_##k(uint64_t); __asm__(".globl many_" #k "\n.type many_" #k ",@function\n");
DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5) DECL(6) DECL(7)
DECL(8) DECL(9) DECL(10) DECL(11) DECL(12) DECL(13) DECL(14) DECL(15)
DECL(16) DECL(17) DECL(18) DECL(19) DECL(20) DECL(21) DECL(22) DECL(23)
DECL(24) DECL(25) DECL(26) DECL(27) DECL(28) DECL(29) DECL(30) DECL(31)
static uint64_t (*const many[32])(uint64_t) = {
    many_0, many_1, many_2, many_3, many_4, many_5, many_6, many_7,
    many_8, many_9, many_10, many_11, many_12, many_13, many_14, many_15,
    many_16, many_17, many_18, many_19, many_20, many_21, many_22, many_23,
    many_24, many_25, many_26, many_27, many_28, many_29, many_30, many_31,
};

/* Mangled names, as C++ and Rust compilers would emit them. */
NOINLINE uint64_t cpp_poke(uint64_t x) __asm__("_ZN3app6widget4pokeEm");
NOINLINE uint64_t cpp_poke(uint64_t x) { return x + 1; }           /* app::widget::poke(unsigned long) */
NOINLINE uint64_t rust_tick(uint64_t x) __asm__("_ZN3app4core4tick17h0123456789abcdefE");
NOINLINE uint64_t rust_tick(uint64_t x) { return x + 2; }          /* app::core::tick */
NOINLINE uint64_t rust_tock(uint64_t x) __asm__("_RNvCs1234_3app4tock");
NOINLINE uint64_t rust_tock(uint64_t x) { return x + 3; }          /* app::tock */

NOINLINE __attribute__((aligned(4096))) uint64_t evict_a(uint64_t x) { return x * 3 + 1; }
NOINLINE __attribute__((aligned(4096))) uint64_t evict_b(uint64_t x) { return x * 5 + 2; }
NOINLINE __attribute__((aligned(4096))) uint64_t selfread_fn(uint64_t x) { return x * 11 + 5; }

static volatile int evict_stop;
static uint64_t evict_calls[4];
static void *evict_worker(void *arg) {
    uintptr_t k = (uintptr_t)arg;
    uint64_t acc = k, calls = 0;
    while (!__atomic_load_n(&evict_stop, __ATOMIC_RELAXED)) {
        acc = evict_b(evict_a(acc));
        calls++;
    }
    evict_calls[k] = calls;
    return (void *)(uintptr_t)acc;
}

static void *exit_from_thread(void *arg) {
    (void)arg;
    fflush(stdout);
    exit(7);
}

static volatile sig_atomic_t own_traps;
static void on_trap(int sig) { (void)sig; own_traps++; }

static pthread_barrier_t barrier;
static uint64_t per_thread_n;
static void *worker(void *arg) {
    uint64_t acc = (uint64_t)(uintptr_t)arg;
    pthread_barrier_wait(&barrier);
    for (uint64_t i = 0; i < per_thread_n; i++) acc = counted_mt(acc);
    return (void *)(uintptr_t)acc;
}

static uint64_t (*hit_fn)(uint64_t);
static double hit_ns[256];
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}
static void *hit_worker(void *arg) {
    uintptr_t k = (uintptr_t)arg;
    uint64_t acc = k;
    pthread_barrier_wait(&barrier);
    double t0 = cpu_now();
    for (uint64_t i = 0; i < per_thread_n; i++) acc = hit_fn(acc);
    hit_ns[k] = (cpu_now() - t0) / (double)per_thread_n;
    return (void *)(uintptr_t)acc;
}

static uint64_t (*hit_kind(const char *k))(uint64_t) {
    return !strcmp(k, "push") ? hit_push
         : !strcmp(k, "mov")  ? hit_mov
         : !strcmp(k, "nop5") ? hit_nop5
         : !strcmp(k, "trap") ? hit_trap : NULL;
}

static void *page_of(void *f) { return (void *)((uintptr_t)f & ~(uintptr_t)4095); }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: probed MODE N (see the source)\n");
        return 2;
    }
    const char *mode = argv[1];
    uint64_t n = strtoull(argv[argc - 1], NULL, 0);
    uint64_t acc = 1;
    if (!strcmp(mode, "basic")) {
        for (uint64_t i = 0; i < n; i++) acc = counted(acc) & 0xffffffff;
        printf("counted=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(mode, "threads") && argc == 4) {
        int t = atoi(argv[2]);
        if (t < 1 || t > 256) return 2;
        pthread_t th[256];
        per_thread_n = n;
        pthread_barrier_init(&barrier, NULL, (unsigned)t);
        for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < t; i++) {
            void *r;
            pthread_join(th[i], &r);
            acc ^= (uint64_t)(uintptr_t)r;
        }
        printf("counted_mt=%llu acc=%llx\n", (unsigned long long)(n * (uint64_t)t), (unsigned long long)acc);
    } else if (!strcmp(mode, "fib")) {
        uint64_t r = fib(n);
        printf("fib=%llu fib_calls=%llu\n", (unsigned long long)r, (unsigned long long)fib_calls);
    } else if (!strcmp(mode, "signal")) {
        signal(SIGUSR1, on_usr1);
        for (uint64_t i = 0; i < n; i++) raise(SIGUSR1);
        printf("in_handler=%d\n", (int)handled);
    } else if (!strcmp(mode, "fork")) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            for (uint64_t i = 0; i < n; i++) acc = after_fork(acc);
            printf("child after_fork=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)acc);
            fflush(stdout);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        printf("parent after_fork=0 child_status=%d\n", st);
    } else if (!strcmp(mode, "dontneed")) {
        for (uint64_t i = 0; i < n; i++) {
            acc = dropped(acc);
            if (madvise(page_of((void *)dropped), 4096, MADV_DONTNEED) != 0) {
                perror("madvise");
                return 3;
            }
        }
        printf("dropped=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(mode, "sites")) {
        for (uint64_t i = 0; i < n; i++) {
            acc += site_lea() + site_mov() + site_call(i) + site_jcc(i & 1) + site_jmp() + site_push(i);
            acc += site_adj(i) + site_straddle(i);
            for (int k = 0; k < 32; k++) acc += many[k](i);
        }
        /* site_jcc's jz is taken when its argument is 0: on even i. */
        printf("sites=%llu jz_taken=%llu acc=%llx\n", (unsigned long long)n,
               (unsigned long long)((n + 1) / 2), (unsigned long long)acc);
    } else if (!strcmp(mode, "trapown")) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_trap;
        sigaction(SIGTRAP, &sa, &old);
        printf("initial=%s\n", old.sa_handler == SIG_DFL ? "default" : "other");
        sigaction(SIGTRAP, NULL, &old);
        printf("installed=%s\n", old.sa_handler == on_trap ? "ours" : "other");
        for (uint64_t i = 0; i < n; i++) acc = counted(acc) & 0xffffffff;
        for (uint64_t i = 0; i < n; i++) __asm__ volatile("int3");
        raise(SIGTRAP);
        printf("counted=%llu own_traps=%d\n", (unsigned long long)n, (int)own_traps);
    } else if (!strcmp(mode, "mangled")) {
        for (uint64_t i = 0; i < n; i++) acc = rust_tock(rust_tick(cpp_poke(acc)));
        printf("mangled=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(mode, "forktree") && argc == 4) {
        int k = atoi(argv[2]);
        if (k < 1 || k > 1000) return 2;
        fflush(stdout);
        for (int i = 0; i < k; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                for (uint64_t j = 0; j < n; j++) acc = after_fork(acc);
                _exit(acc == 12345 ? 1 : 0);
            }
        }
        int ok = 0, st;
        while (wait(&st) > 0)
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++;
        printf("children=%d after_fork=%llu\n", ok, (unsigned long long)(n * (uint64_t)k));
    } else if (!strcmp(mode, "exitthread")) {
        for (uint64_t i = 0; i < n; i++) acc = counted(acc) & 0xffffffff;
        printf("counted=%llu\n", (unsigned long long)n);
        pthread_t t;
        pthread_create(&t, NULL, exit_from_thread, NULL);
        pthread_join(t, NULL);
        return 0;
    } else if (!strcmp(mode, "abort") || !strcmp(mode, "segv") || !strcmp(mode, "pause")) {
        for (uint64_t i = 0; i < n; i++) acc = counted(acc) & 0xffffffff;
        printf("counted=%llu\n", (unsigned long long)n);
        fflush(stdout);
        if (!strcmp(mode, "abort")) abort();
        if (!strcmp(mode, "segv")) *(volatile int *)(uintptr_t)sink = 1;
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    } else if (!strcmp(mode, "evict")) {
        pthread_t th[4];
        for (uintptr_t k = 0; k < 4; k++) pthread_create(&th[k], NULL, evict_worker, (void *)k);
        uint64_t own = 0;
        for (uint64_t c = 0; c < n; c++) {
            if (madvise(page_of((void *)evict_a), 4096, MADV_DONTNEED) != 0 ||
                madvise(page_of((void *)evict_b), 4096, MADV_DONTNEED) != 0) {
                perror("madvise");
                return 3;
            }
            acc = evict_b(evict_a(acc));
            own++;
        }
        __atomic_store_n(&evict_stop, 1, __ATOMIC_RELAXED);
        uint64_t total = own;
        for (int k = 0; k < 4; k++) {
            pthread_join(th[k], NULL);
            total += evict_calls[k];
        }
        printf("cycles=%llu evict_calls=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)total, (unsigned long long)acc);
    } else if (!strcmp(mode, "selfread")) {
        acc = selfread_fn(n);
        fflush(stdout);
        if (write(1, (const void *)selfread_fn, 64) != 64) {
            perror("write");
            return 3;
        }
        printf("\nacc=%llu\n", (unsigned long long)acc);
    } else if (!strcmp(mode, "defeat")) {
        uint64_t sums[5] = {0};
        for (uint64_t i = 0; i < n; i++) {
            sums[0] += defeat_loop(i % 7 + 1);
            sums[1] += defeat_short(i);
            sums[2] += defeat_table(i);
            sums[3] += defeat_tail(i);
            sums[4] += defeat_flags(i % 10);
        }
        printf("defeat=%llu loop=%llu short=%llu table=%llu tail=%llu flags=%llu\n", (unsigned long long)n,
               (unsigned long long)sums[0], (unsigned long long)sums[1], (unsigned long long)sums[2],
               (unsigned long long)sums[3], (unsigned long long)sums[4]);
    } else if (!strcmp(mode, "hitloop") && argc == 4) {
        uint64_t (*f)(uint64_t) = hit_kind(argv[2]);
        if (!f) return 2;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (uint64_t i = 0; i < n; i++) acc = f(acc);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
        printf("ns_per_call=%.2f acc=%llu\n", ns / (double)n, (unsigned long long)acc);
    } else if ((!strcmp(mode, "hitloop_mt") || !strcmp(mode, "hammer")) && argc == 5) {
        int t = atoi(argv[3]);
        hit_fn = hit_kind(argv[2]);
        if (!hit_fn || t < 1 || t > 256) return 2;
        pthread_t th[256];
        per_thread_n = n;
        pthread_barrier_init(&barrier, NULL, (unsigned)t);
        for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, hit_worker, (void *)(uintptr_t)i);
        double sum = 0;
        for (int i = 0; i < t; i++) {
            void *r;
            pthread_join(th[i], &r);
            acc ^= (uint64_t)(uintptr_t)r;
            sum += hit_ns[i];
        }
        printf("hit_%s=%llu acc=%llx", argv[2], (unsigned long long)(n * (uint64_t)t), (unsigned long long)acc);
        if (!strcmp(mode, "hitloop_mt")) printf(" ns_per_call=%.2f", sum / t);
        printf("\n");
    } else if (!strcmp(mode, "blocked")) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTRAP);
        sigprocmask(SIG_BLOCK, &set, NULL);
        for (uint64_t i = 0; i < n; i++) acc = counted(acc) & 0xffffffff;
        printf("counted=%llu acc=%llx\n", (unsigned long long)n, (unsigned long long)acc);
    } else {
        fprintf(stderr, "probed: unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
