// The address-space layout as the program sees it, for comparison with a
// native run.
//
//   layout addrs         print where main, the heap start and the stack are
//   layout recurse MB    recurse through MB MiB of stack, print the depth
//   layout overflow      recurse until the stack overflows; print the depth
//                        (from a SIGSEGV handler on an alternate stack)
//   layout sbrk MB       grow brk in 1 MiB steps up to MB MiB; print how far
//   layout nested N      call a GCC nested function through a pointer (its
//                        trampoline lives on the stack: needs an executable
//                        stack, which PT_GNU_STACK asks for)
//   layout madvise       the answers of madvise(2) on the program's own text
//   layout wait          print "ready", wait for a line on stdin, then run
//                        code and read data not touched before (a file
//                        that changed meanwhile must not show through)
//   layout dropfork N    drop the text pages of two functions (MADV_DONTNEED),
//                        then fork N children that call them; print how many
//                        children computed the right answer
//
// build-flags: -z execstack
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile unsigned long depth;

__attribute__((noinline)) static unsigned long recurse(unsigned long left) {
    volatile char frame[1024];
    frame[0] = (char)left;
    depth++;
    if (left == 0) return frame[0];
    return recurse(left - 1) + frame[0];
}

static void on_segv(int sig) {
    (void)sig;
    char buf[64];
    int n = snprintf(buf, sizeof buf, "overflow_depth=%lu\n", depth);
    if (write(1, buf, (size_t)n) < 0) _exit(3);
    _exit(0);
}

#define S16 "0123456789abcdef"
#define S256 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16 S16
#define S4K S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256 S256
static const char cold[] = S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K S4K;

__attribute__((noinline)) static int apply(int (*f)(int), int x) { return f(x); }

static int nested(int n) {
    int base = n * 3;
    int add(int x) { return x + base; }
    return apply(add, 4);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "addrs";
    long arg = argc > 2 ? strtol(argv[2], NULL, 0) : 0;
    if (!strcmp(mode, "addrs")) {
        int local;
        printf("main=%p\nbrk=%p\nstack=%p\n", (void *)main, sbrk(0), (void *)&local);
        return 0;
    }
    if (!strcmp(mode, "recurse")) {
        unsigned long frames = (unsigned long)arg * 1024;
        recurse(frames);
        printf("recursed=%lu\n", depth);
        return 0;
    }
    if (!strcmp(mode, "overflow")) {
        static char alt[65536];
        stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt};
        sigaltstack(&ss, NULL);
        struct sigaction sa = {.sa_handler = on_segv, .sa_flags = SA_ONSTACK};
        sigaction(SIGSEGV, &sa, NULL);
        recurse((unsigned long)-1 / 2);
        return 1;
    }
    if (!strcmp(mode, "sbrk")) {
        long mb = 0;
        while (mb < arg && sbrk(1 << 20) != (void *)-1) mb += 1 + (long)recurse(0);
        printf("sbrk_mb=%ld\n", mb);
        return 0;
    }
    if (!strcmp(mode, "nested")) {
        printf("nested=%d\n", nested((int)arg));
        return 0;
    }
    if (!strcmp(mode, "madvise")) {
        uintptr_t page = (uintptr_t)main & ~(uintptr_t)4095;
        static const struct { const char *name; int advice; } all[] = {
            {"MADV_FREE", MADV_FREE},         {"MADV_WIPEONFORK", MADV_WIPEONFORK},
            {"MADV_KEEPONFORK", MADV_KEEPONFORK}, {"MADV_REMOVE", MADV_REMOVE},
            {"MADV_DONTFORK", MADV_DONTFORK}, {"MADV_DOFORK", MADV_DOFORK},
            {"MADV_COLD", MADV_COLD},         {"MADV_PAGEOUT", MADV_PAGEOUT},
            {"MADV_MERGEABLE", MADV_MERGEABLE}, {"MADV_WILLNEED", MADV_WILLNEED},
            {"MADV_POPULATE_READ", MADV_POPULATE_READ},
            {"MADV_POPULATE_WRITE", MADV_POPULATE_WRITE},
            {"MADV_DONTNEED", MADV_DONTNEED},
        };
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
            int r = madvise((void *)page, 4096, all[i].advice);
            printf("%s=%s\n", all[i].name, r == 0 ? "0" : strerror(errno));
        }
        printf("still_runs=%d\n", nested(1));
        return 0;
    }
    if (!strcmp(mode, "wait")) {
        printf("ready\n");
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 4;
        unsigned long sum = 0;
        for (size_t i = 0; i < sizeof cold; i++) sum = sum * 31 + (unsigned char)cold[i];
        printf("cold=%lx recurse=%lu\n", sum, recurse(10));
        return 0;
    }
    if (!strcmp(mode, "dropfork")) {
        unsigned long want = recurse(3) + (unsigned long)nested(1);
        uintptr_t pages[] = {(uintptr_t)recurse & ~(uintptr_t)4095,
                             (uintptr_t)nested & ~(uintptr_t)4095};
        for (int i = 0; i < 2; i++) madvise((void *)pages[i], 4096, MADV_DONTNEED);
        long good = 0;
        for (long i = 0; i < arg; i++) {
            pid_t pid = fork();
            if (pid == 0) _exit(recurse(3) + (unsigned long)nested(1) == want ? 0 : 1);
            int st;
            if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0) good++;
        }
        printf("children_ok=%ld\n", good);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
