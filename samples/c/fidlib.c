/*
 * fidlib: the shared object dlfidelity dlopens (libfidelity.so, built with
 * -shared -fPIC by build.rs, soname libfidelity.so).
 *
 *  - fid_parse calls libc's strtol once per call;
 *  - helper is also defined (and exported) by dlfidelity: fid_which calls
 *    it through the PLT, so it reaches dlfidelity's helper when the
 *    library is opened with RTLD_NOW (the executable comes first in the
 *    global scope) and the library's own with RTLD_DEEPBIND;
 *  - fid_trace calls backtrace and backtrace_symbols from here and prints
 *    each frame as `OBJECT(SYMBOL)`, the object's basename and the symbol
 *    without its offset, leaving out every address.
 */
// build-kind: shared libfidelity.so
// build-flags: -fno-builtin -Wl,-soname,libfidelity.so
#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *helper(void);
const char *fid_which(void);
long fid_parse(const char *text, int base);
int fid_trace(void);

const char *helper(void) {
    return "library";
}

const char *fid_which(void) {
    return helper();
}

long fid_parse(const char *text, int base) {
    char *end = NULL;
    long r = strtol(text, &end, base);
    return r * 7 + (long)(end - text);
}

/* `PATH(SYMBOL+0xOFF) [0xADDR]` -> `BASENAME(SYMBOL)`. */
static void print_frame(int i, const char *s) {
    const char *open = strchr(s, '(');
    if (!open) {
        printf("  frame %d: ?\n", i);
        return;
    }
    const char *base = s;
    for (const char *p = s; p < open; p++)
        if (*p == '/')
            base = p + 1;
    const char *sym = open + 1;
    size_t n = strcspn(sym, "+)");
    printf("  frame %d: %.*s(%.*s)\n", i, (int)(open - base), base, (int)n, sym);
}

int fid_trace(void) {
    void *frames[32];
    int n = backtrace(frames, 32);
    char **syms = backtrace_symbols(frames, n);
    if (!syms) {
        printf("backtrace_symbols failed\n");
        return -1;
    }
    printf("backtrace from fid_trace: %d frames\n", n);
    for (int i = 0; i < n; i++)
        print_frame(i, syms[i]);
    free(syms);
    return n;
}
