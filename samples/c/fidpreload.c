/*
 * fidpreload: an LD_PRELOAD library (libfidpreload.so) that interposes
 * strtol: each call is counted and passed on to the next definition
 * (libc's, found with dlsym(RTLD_NEXT)); a destructor prints the count to
 * stderr at exit: `preload: strtol calls=N`.
 */
// build-kind: shared libfidpreload.so
// build-flags: -fno-builtin
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static long (*next_strtol)(const char *, char **, int);
static unsigned long calls;

long strtol(const char *text, char **end, int base) {
    if (!next_strtol) {
        *(void **)&next_strtol = dlsym(RTLD_NEXT, "strtol");
        if (!next_strtol) {
            fprintf(stderr, "preload: dlsym(RTLD_NEXT, strtol): %s\n", dlerror());
            abort();
        }
    }
    calls++;
    return next_strtol(text, end, base);
}

__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "preload: strtol calls=%lu\n", calls);
}
