/* C++ exceptions and stack switching through timed functions: the tests
 * compare each mode's output with a native run, and the calls counted with
 * what the program says.
 *
 *   unwind throw N D     N times: thrower(D) recurses D deep through
 *                        `layer`, the deepest throws, main catches; prints
 *                        "caught=N layers=N*D"
 *   unwind catch N       N times: catcher() calls a function that throws and
 *                        catches it itself, then returns; "caught=N"
 *   unwind backtrace     inner() (called by outer()) prints where the first
 *                        three frames backtrace() finds are, relative to
 *                        main's address (the same run to run, ASLR or not):
 *                        "frames=A,B,C"
 *   unwind context N     N times: swapcontext to a coroutine that calls
 *                        `hop`, which switches back in the middle; main
 *                        resumes it; prints "hops=N"
 */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <execinfo.h>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <ucontext.h>

#define NOINLINE __attribute__((noinline))

static volatile unsigned long sink;
static unsigned long layers;

extern "C" NOINLINE void layer(int d)
{
    layers++;
    if (d <= 1) throw std::runtime_error("deep");
    layer(d - 1);
    sink++;
}

extern "C" NOINLINE void fails(int i)
{
    if (i >= 0) throw std::out_of_range("x");
    sink++;
}

extern "C" NOINLINE int catcher(int i)
{
    try {
        fails(i);
    } catch (const std::out_of_range &) {
        return 1;
    }
    return 0;
}

int main(int argc, char **argv);

extern "C" NOINLINE void inner(std::string &out)
{
    void *pcs[8];
    int n = backtrace(pcs, 8);
    for (int i = 0; i < n && i < 3; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%s%ld", i ? "," : "", (long)((char *)pcs[i] - (char *)&main));
        out += buf;
    }
}

extern "C" NOINLINE void outer(std::string &out)
{
    inner(out);
    sink++;
}

static ucontext_t main_ctx, co_ctx;
static unsigned long hops;

extern "C" NOINLINE void hop(void)
{
    hops++;
    swapcontext(&co_ctx, &main_ctx);
    sink++;
}

static void coroutine(void)
{
    for (;;) hop();
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "throw")) {
        int n = atoi(argv[2]), d = atoi(argv[3]), caught = 0;
        for (int i = 0; i < n; i++) {
            try {
                layer(d);
            } catch (const std::runtime_error &) {
                caught++;
            }
        }
        printf("caught=%d layers=%lu\n", caught, layers);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "catch")) {
        int n = atoi(argv[2]), caught = 0;
        for (int i = 0; i < n; i++) caught += catcher(i);
        printf("caught=%d\n", caught);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "backtrace")) {
        std::string out;
        outer(out);
        printf("frames=%s\n", out.c_str());
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "context")) {
        int n = atoi(argv[2]);
        static char stack[1 << 16];
        getcontext(&co_ctx);
        co_ctx.uc_stack.ss_sp = stack;
        co_ctx.uc_stack.ss_size = sizeof stack;
        co_ctx.uc_link = &main_ctx;
        makecontext(&co_ctx, coroutine, 0);
        for (int i = 0; i < n; i++) swapcontext(&main_ctx, &co_ctx);
        printf("hops=%lu\n", hops);
        return 0;
    }
    fprintf(stderr, "usage: unwind throw N D | catch N | backtrace | context N\n");
    return 2;
}
