/*
 * dlfidelity: what a program can see of the shared objects ld.so mapped
 * for it, printed without any absolute address, so that a run under
 * uprobe-exec (which serves their text from anonymous memory) can be
 * compared byte for byte with a native one (tests/objects_fidelity.rs).
 *
 *   dlfidelity LIB
 *
 * LIB is libfidelity.so (fidlib.c), by path or by soname (LD_LIBRARY_PATH).
 *
 * 1. calls strtol MAIN_CALLS times itself and prints a checksum;
 * 2. lists the loaded objects (dl_iterate_phdr): basename, number of
 *    PT_LOAD headers, whether dlpi_addr is page-aligned, dlpi_adds/subs;
 * 3. twice, once with RTLD_NOW and once with RTLD_NOW | RTLD_DEEPBIND:
 *    dlopens LIB; prints whose helper() the library's fid_which reaches
 *    (ours, exported with -rdynamic, or the library's own under
 *    RTLD_DEEPBIND); calls fid_parse (so strtol) LIB_CALLS times; dladdr
 *    of fid_parse and of strtol; a backtrace taken inside the library;
 *    the objects again; dlcloses LIB and checks that it is gone;
 * 4. prints `strtol_calls=N fid_parse_calls=M`: the calls of strtol made
 *    by the program and the library (none is made by anything else here).
 *
 * When fd 5 is open, it also writes there, for the executable mapping
 * holding fid_parse (LIB), strtol (libc) and helper (this program), its
 * permissions and whether it is a file's (`file PATH`) or anonymous
 * (`anon NAME`, NAME empty without a name): what uprobe-exec changes, on
 * purpose, so it is kept out of stdout.
 */
// build-kind: dynamic
// build-flags: -fno-builtin -rdynamic
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAIN_CALLS 1000
#define LIB_CALLS 300

const char *helper(void);
int call_trace(int (*trace)(void));

/* Exported (-rdynamic): the library's fid_which binds to this one unless
 * it was opened with RTLD_DEEPBIND. */
const char *helper(void) {
    return "main";
}

static unsigned long strtol_calls, fid_parse_calls;
static char text[32];
static char *volatile text_ptr = text;

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void fill(unsigned i) {
    unsigned v = (i * 2654435761u) >> (i % 5);
    if (i % 2)
        snprintf(text_ptr, sizeof text, " %x;", v);
    else
        snprintf(text_ptr, sizeof text, "-%u|", v % 99991u);
}

static void main_calls(void) {
    unsigned long sum = 0;
    for (unsigned i = 0; i < MAIN_CALLS; i++) {
        fill(i);
        char *end = NULL;
        long r = strtol(text_ptr, &end, i % 2 ? 16 : 10);
        strtol_calls++;
        sum = sum * 31 + (unsigned long)r + (unsigned long)(end - text_ptr);
    }
    printf("main strtol: calls=%d checksum=%lu\n", MAIN_CALLS, sum);
}

static int phdr_cb(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    int *index = data;
    int loads = 0;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD)
            loads++;
    const char *name = info->dlpi_name && info->dlpi_name[0] ? base_name(info->dlpi_name)
                                                             : "(main program)";
    long page = sysconf(_SC_PAGESIZE);
    printf("  object %d: %s loads=%d addr_page_aligned=%s\n", (*index)++, name, loads,
           info->dlpi_addr % (unsigned long)page == 0 ? "yes" : "no");
    return 0;
}

static void objects(const char *when) {
    int index = 0;
    printf("objects %s:\n", when);
    dl_iterate_phdr(phdr_cb, &index);
}

/* dlpi_adds and dlpi_subs, from the first object. */
static int counts_cb(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    unsigned long long *c = data;
    c[0] = info->dlpi_adds;
    c[1] = info->dlpi_subs;
    return 1;
}

static void load_counts(const char *when) {
    unsigned long long c[2] = {0, 0};
    dl_iterate_phdr(counts_cb, c);
    printf("load counts %s: adds=%llu subs=%llu\n", when, c[0], c[1]);
}

static void show_dladdr(const char *what, void *addr) {
    Dl_info info;
    if (!dladdr(addr, &info)) {
        printf("dladdr %s: not found\n", what);
        return;
    }
    printf("dladdr %s: fname=%s sname=%s exact=%s\n", what,
           info.dli_fname ? base_name(info.dli_fname) : "(null)",
           info.dli_sname ? info.dli_sname : "(null)",
           info.dli_saddr == addr ? "yes" : "no");
}

/* Writes to fd 5 the /proc/self/maps mapping holding `addr`. */
static void show_mapping(int round, const char *what, void *addr) {
    if (fcntl(5, F_GETFD) == -1)
        return;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) {
        dprintf(5, "round %d %s: cannot open /proc/self/maps\n", round, what);
        return;
    }
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end, inode;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu %n", &start, &end, perms, &inode, &path_at) < 4)
            continue;
        if ((uintptr_t)addr < start || (uintptr_t)addr >= end)
            continue;
        line[strcspn(line, "\n")] = 0;
        const char *path = path_at ? line + path_at : "";
        dprintf(5, "round %d %s: %s %s %s\n", round, what, perms, inode ? "file" : "anon", path);
        found = 1;
        break;
    }
    fclose(maps);
    if (!found)
        dprintf(5, "round %d %s: no mapping\n", round, what);
}

/* Calls into the library's backtrace; not inlined, so it is a frame. */
__attribute__((noinline)) int call_trace(int (*trace)(void)) {
    int n = trace();
    __asm__ volatile("" ::: "memory");
    return n + 1;
}

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) {
        fprintf(stderr, "dlfidelity: dlsym %s: %s\n", name, dlerror());
        exit(2);
    }
    return p;
}

static void library_round(const char *lib, int round, int flags, const char *how) {
    void *h = dlopen(lib, flags);
    if (!h) {
        fprintf(stderr, "dlfidelity: dlopen %s (%s): %s\n", lib, how, dlerror());
        exit(2);
    }
    const char *(*which)(void);
    long (*parse)(const char *, int);
    int (*trace)(void);
    *(void **)&which = sym(h, "fid_which");
    *(void **)&parse = sym(h, "fid_parse");
    *(void **)&trace = sym(h, "fid_trace");
    printf("round %d (%s): the library's helper() is %s's\n", round, how, which());
    unsigned long sum = 0;
    for (unsigned i = 0; i < LIB_CALLS; i++) {
        fill(i + 7919u * (unsigned)round);
        sum = sum * 33 + (unsigned long)parse(text_ptr, i % 2 ? 16 : 10);
        fid_parse_calls++;
        strtol_calls++;
    }
    printf("round %d: fid_parse calls=%d checksum=%lu\n", round, LIB_CALLS, sum);
    show_dladdr("fid_parse", (void *)parse);
    show_dladdr("fid_which", (void *)which);
    show_dladdr("strtol", dlsym(RTLD_DEFAULT, "strtol"));
    show_dladdr("strtol (next after the program)", dlsym(RTLD_NEXT, "strtol"));
    int frames = call_trace(trace);
    printf("round %d: call_trace returned %d\n", round, frames);
    char when[32];
    snprintf(when, sizeof when, "in round %d", round);
    objects(when);
    load_counts(when);
    show_mapping(round, "fid_parse", (void *)parse);
    show_mapping(round, "strtol", dlsym(RTLD_DEFAULT, "strtol"));
    show_mapping(round, "helper", (void *)helper);
    if (dlclose(h) != 0) {
        fprintf(stderr, "dlfidelity: dlclose: %s\n", dlerror());
        exit(2);
    }
    void *again = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
    printf("round %d: after dlclose the library is %s\n", round, again ? "still loaded" : "gone");
    if (again)
        dlclose(again);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: dlfidelity LIB\n");
        return 2;
    }
    main_calls();
    objects("at start");
    load_counts("at start");
    show_dladdr("helper", (void *)helper);
    library_round(argv[1], 1, RTLD_NOW, "RTLD_NOW");
    library_round(argv[1], 2, RTLD_NOW | RTLD_DEEPBIND, "RTLD_NOW|RTLD_DEEPBIND");
    objects("at the end");
    load_counts("at the end");
    printf("strtol_calls=%lu fid_parse_calls=%lu\n", strtol_calls, fid_parse_calls);
    return 0;
}
