/*
 * pages.c - many text pages, threads, fork and MADV_DONTNEED.
 *
 * 64 small functions page_fn_0 .. page_fn_63 are each aligned to 4096 bytes,
 * so each starts on its own page of text (> 64 text pages in total). The
 * program calls them in various ways so that a loader/prober sees first
 * touches of cold pages from several threads, from a forked child, and again
 * after the pages were dropped with MADV_DONTNEED.
 *
 *   (no option)     call every function once, print "pages: calls=64 sum=<hex>"
 *   --threads T     T threads (1..64) call all functions at the same instant
 *   --fork          parent calls 0..31, child calls 32..63
 *   --dontneed N    N cycles of MADV_DONTNEED on every function page + calls
 *   --exec PATH     at the end, execv(PATH, {PATH, NULL})
 *
 * At most one of --threads/--fork/--dontneed; --exec combines with any.
 * Unknown options: message on stderr, exit 2. All output is deterministic.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NFUNCS 64
#define PAGE 4096UL
#define MAX_THREADS 64

typedef uint64_t (*page_fn)(uint64_t);

/* X-macro listing the function indices 0..63. */
#define FOR_EACH_PAGE_FN(X)                                                    \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)                                    \
    X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)                              \
    X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)                            \
    X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31)                            \
    X(32) X(33) X(34) X(35) X(36) X(37) X(38) X(39)                            \
    X(40) X(41) X(42) X(43) X(44) X(45) X(46) X(47)                            \
    X(48) X(49) X(50) X(51) X(52) X(53) X(54) X(55)                            \
    X(56) X(57) X(58) X(59) X(60) X(61) X(62) X(63)

/*
 * page_fn_K: a little arithmetic distinct for each K. The loop (trip count
 * 3 + K % 5) keeps the bodies different so the compiler cannot merge them.
 */
#define DEFINE_PAGE_FN(K)                                                      \
    __attribute__((noinline, aligned(4096))) static uint64_t page_fn_##K(     \
        uint64_t x)                                                            \
    {                                                                          \
        for (unsigned i = 0; i < 3 + (K) % 5; i++)                             \
            x = x * (2 * (K) + 1) + (K) + i;                                   \
        return x ^ (x >> 29);                                                  \
    }
FOR_EACH_PAGE_FN(DEFINE_PAGE_FN)

#define PAGE_FN_ENTRY(K) page_fn_##K,
static page_fn const page_fns[NFUNCS] = { FOR_EACH_PAGE_FN(PAGE_FN_ENTRY) };

/* Calls page_fns[from .. to-1] in order on a running value. */
static uint64_t run_range(uint64_t x, int from, int to)
{
    for (int k = from; k < to; k++)
        x = page_fns[k](x);
    return x;
}

/* Order-dependent combination of per-thread results. */
static uint64_t combine(uint64_t sum, uint64_t v)
{
    return ((sum << 7) | (sum >> 57)) ^ (v * 0x9e3779b97f4a7c15ULL);
}

static void *page_of(page_fn f)
{
    return (void *)((uintptr_t)f & ~(uintptr_t)(PAGE - 1));
}

/* ---- --threads ---------------------------------------------------------- */

struct thread_arg {
    int index;
    pthread_barrier_t *barrier;
    uint64_t result;
};

static void *thread_main(void *p)
{
    struct thread_arg *a = p;
    int start = (a->index * 7) % NFUNCS;
    uint64_t x = 0x1234567ULL + (uint64_t)a->index * 1000003ULL; /* per-thread seed */

    pthread_barrier_wait(a->barrier); /* everyone enters cold pages together */
    for (int j = 0; j < NFUNCS; j++)
        x = page_fns[(start + j) % NFUNCS](x);
    a->result = x;
    return NULL;
}

static void run_threads(int nthreads)
{
    pthread_t tids[MAX_THREADS];
    struct thread_arg args[MAX_THREADS];
    pthread_barrier_t barrier;
    uint64_t sum = 0;
    int err;

    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        args[i].index = i;
        args[i].barrier = &barrier;
        args[i].result = 0;
        err = pthread_create(&tids[i], NULL, thread_main, &args[i]);
        if (err != 0) {
            printf("pthread_create error: %s\n", strerror(err));
            exit(3);
        }
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_join(tids[i], NULL);
        sum = combine(sum, args[i].result); /* fixed order: thread index */
    }
    pthread_barrier_destroy(&barrier);
    printf("threads=%d sum=%016llx\n", nthreads, (unsigned long long)sum);
}

/* ---- --fork ------------------------------------------------------------- */

static void run_fork(void)
{
    uint64_t x = run_range(1, 0, NFUNCS / 2);
    pid_t pid;
    int status;

    fflush(stdout); /* don't duplicate buffered output in the child */
    pid = fork();
    if (pid < 0) {
        printf("fork error: %s\n", strerror(errno));
        exit(3);
    }
    if (pid == 0) {
        /* Child: pages 32..63 were never touched by the parent. */
        uint64_t c = run_range(x, NFUNCS / 2, NFUNCS);
        printf("child sum=%016llx\n", (unsigned long long)c);
        exit(0);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            printf("waitpid error: %s\n", strerror(errno));
            exit(3);
        }
    }
    if (WIFEXITED(status))
        printf("parent sum=%016llx child_status=%d\n", (unsigned long long)x,
               WEXITSTATUS(status));
    else
        printf("parent sum=%016llx child_status=signal:%d\n", (unsigned long long)x,
               WIFSIGNALED(status) ? WTERMSIG(status) : -1);
}

/* ---- --dontneed --------------------------------------------------------- */

static void run_dontneed(int cycles)
{
    uint64_t x = run_range(1, 0, NFUNCS);

    for (int c = 0; c < cycles; c++) {
        for (int k = 0; k < NFUNCS; k++) {
            if (madvise(page_of(page_fns[k]), PAGE, MADV_DONTNEED) != 0) {
                printf("madvise error: %s\n", strerror(errno));
                exit(3);
            }
        }
        x = run_range(x, 0, NFUNCS);
    }
    printf("dontneed cycles=%d sum=%016llx\n", cycles, (unsigned long long)x);
}

/* ---- main --------------------------------------------------------------- */

static int int_arg(const char *opt, const char *val, int min, int max)
{
    char *end;
    long v;
    if (val == NULL) {
        fprintf(stderr, "pages: %s needs a value\n", opt);
        exit(2);
    }
    errno = 0;
    v = strtol(val, &end, 10);
    if (errno != 0 || *end != '\0' || end == val || v < min || v > max) {
        fprintf(stderr, "pages: bad value for %s: %s (want %d..%d)\n", opt, val, min, max);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    enum { DEFAULT, THREADS, FORK, DONTNEED } mode = DEFAULT;
    int nthreads = 0, cycles = 0, modes = 0;
    const char *exec_path = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0) {
            nthreads = int_arg(argv[i], argv[i + 1], 1, MAX_THREADS);
            mode = THREADS, modes++, i++;
        } else if (strcmp(argv[i], "--fork") == 0) {
            mode = FORK, modes++;
        } else if (strcmp(argv[i], "--dontneed") == 0) {
            cycles = int_arg(argv[i], argv[i + 1], 0, 1000000);
            mode = DONTNEED, modes++, i++;
        } else if (strcmp(argv[i], "--exec") == 0) {
            if (argv[i + 1] == NULL) {
                fprintf(stderr, "pages: --exec needs a path\n");
                return 2;
            }
            exec_path = argv[++i];
        } else {
            fprintf(stderr, "pages: unknown option: %s\n"
                            "usage: pages [--threads T | --fork | --dontneed N] [--exec PATH]\n",
                    argv[i]);
            return 2;
        }
    }
    if (modes > 1) {
        fprintf(stderr, "pages: use at most one of --threads, --fork, --dontneed\n");
        return 2;
    }

    switch (mode) {
    case DEFAULT:
        printf("pages: calls=%d sum=%016llx\n", NFUNCS,
               (unsigned long long)run_range(1, 0, NFUNCS));
        break;
    case THREADS:
        run_threads(nthreads);
        break;
    case FORK:
        run_fork();
        break;
    case DONTNEED:
        run_dontneed(cycles);
        break;
    }

    fflush(stdout);
    if (exec_path != NULL) {
        char *const exec_argv[] = { (char *)exec_path, NULL };
        execv(exec_path, exec_argv);
        printf("exec %s error: %s\n", exec_path, strerror(errno));
        return 4;
    }
    return 0;
}
