/*
 * libcalls: calls of functions in shared objects, counted by the program
 * itself, for probes on `OBJECT:SPEC` (tests/libraries.rs).
 *
 *   libcalls PLUGIN
 *
 * 1. calls libc's strtol exactly 12345 times, on strings that change at
 *    each call, and prints a checksum of the results;
 * 2. dlopens PLUGIN (RTLD_NOW), calls its plugin_fn 777 times, prints a
 *    checksum, dlcloses it; then does the same once more (the plugin is
 *    mapped again, possibly at another address);
 * 3. prints the totals: `strtol_calls=12345 plugin_calls=1554`.
 *
 * Built only as dynamically linked programs (libcalls-pie, libcalls-nopie),
 * with libplugin.so beside them: see build.rs.
 */
// build-kind: dynamic
// build-flags: -fno-builtin
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STRTOL_CALLS 12345
#define PLUGIN_CALLS 777
#define PLUGIN_ROUNDS 2

/* The text strtol parses: rewritten before each call, through a volatile
 * pointer, so no call can be folded or hoisted. */
static char text[32];
static char *volatile text_ptr = text;

static unsigned long strtol_calls(void) {
    unsigned long sum = 0, calls = 0;
    for (unsigned i = 0; i < STRTOL_CALLS; i++) {
        int base = (i % 3 == 0) ? 16 : (i % 3 == 1) ? 10 : 0;
        unsigned v = (i * 2654435761u) >> (i % 7);
        if (base == 16)
            snprintf(text_ptr, sizeof text, " %x|", v);
        else if (base == 10)
            snprintf(text_ptr, sizeof text, "-%u;", v % 100003u);
        else
            snprintf(text_ptr, sizeof text, "0%o.", v & 0xffffu);
        char *end = NULL;
        long r = strtol(text_ptr, &end, base);
        calls++;
        sum = sum * 31 + (unsigned long)r + (unsigned long)(end - text_ptr);
    }
    printf("strtol: calls=%lu checksum=%lu\n", calls, sum);
    return calls;
}

static unsigned long plugin_round(const char *plugin, int round) {
    void *h = dlopen(plugin, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "libcalls: dlopen %s: %s\n", plugin, dlerror());
        exit(2);
    }
    int (*fn)(int);
    *(void **)&fn = dlsym(h, "plugin_fn");
    if (!fn) {
        fprintf(stderr, "libcalls: dlsym plugin_fn: %s\n", dlerror());
        exit(2);
    }
    unsigned long sum = 0, calls = 0;
    for (int i = 0; i < PLUGIN_CALLS; i++) {
        sum = sum * 33 + (unsigned)fn(i + 1000 * round);
        calls++;
    }
    if (dlclose(h) != 0) {
        fprintf(stderr, "libcalls: dlclose: %s\n", dlerror());
        exit(2);
    }
    printf("plugin round %d: calls=%lu checksum=%lu\n", round, calls, sum);
    return calls;
}

/* libcalls hitloop N PLUGIN: calls the plugin's plugin_hit N times and
 * prints ns per call (the bench's per-hit cost in a shared object). */
static int hitloop(unsigned long n, const char *plugin) {
    void *h = dlopen(plugin, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "libcalls: dlopen %s: %s\n", plugin, dlerror());
        return 2;
    }
    unsigned long (*f)(unsigned long);
    *(void **)&f = dlsym(h, "plugin_hit");
    if (!f) return 2;
    unsigned long acc = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned long i = 0; i < n; i++) acc = f(acc);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("ns_per_call=%.2f acc=%lu\n", ns / (double)n, acc);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "hitloop"))
        return hitloop(strtoul(argv[2], NULL, 10), argv[3]);
    if (argc != 2) {
        fprintf(stderr, "usage: libcalls PLUGIN | libcalls hitloop N PLUGIN\n");
        return 2;
    }
    unsigned long s = strtol_calls();
    unsigned long p = 0;
    for (int round = 1; round <= PLUGIN_ROUNDS; round++)
        p += plugin_round(argv[1], round);
    printf("strtol_calls=%lu plugin_calls=%lu\n", s, p);
    return 0;
}
