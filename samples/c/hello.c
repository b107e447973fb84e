/*
 * hello.c - the uprobe-exec smoke sample.
 *
 * Prints its arguments, an optional environment variable, its working
 * directory and a checksum computed by a few non-inlined functions (so there
 * is real code to probe). Options (anywhere in argv):
 *
 *   --exit N      exit with status N after printing
 *   --stdin       read all of stdin, print stdin_bytes=<n> stdin_fnv=<hex>
 *   --write-fd N  write "fd N ok\n" to the inherited descriptor N
 *   --raise SIG   after printing, raise(SIG) to die by a signal
 *   --stderr      also print "to stderr" on stderr
 *
 * Output is deterministic (apart from argv[0] and cwd).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIEVE_LIMIT 100000

static unsigned char composite[SIEVE_LIMIT + 1];

/* FNV-1a, 64-bit, continuing from hash h. */
__attribute__((noinline)) static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ULL

/* Sieve of Eratosthenes up to limit; returns the number of primes. */
__attribute__((noinline)) static unsigned sieve(unsigned limit)
{
    unsigned count = 0;
    memset(composite, 0, sizeof composite);
    for (unsigned i = 2; i <= limit; i++) {
        if (composite[i])
            continue;
        count++;
        for (unsigned long j = (unsigned long)i * i; j <= limit; j += i)
            composite[j] = 1;
    }
    return count;
}

/* Hash every prime <= limit (as a 32-bit value) into one checksum. */
__attribute__((noinline)) static uint64_t hash_primes(unsigned limit, unsigned count)
{
    uint64_t h = fnv1a(FNV_OFFSET, &count, sizeof count);
    for (uint32_t i = 2; i <= limit; i++)
        if (!composite[i])
            h = fnv1a(h, &i, sizeof i);
    return h;
}

__attribute__((noinline)) static uint64_t compute_checksum(void)
{
    unsigned count = sieve(SIEVE_LIMIT);
    return hash_primes(SIEVE_LIMIT, count);
}

/* Parse a decimal int option value or exit(2). */
static int int_arg(const char *opt, const char *val)
{
    char *end;
    long v;
    if (val == NULL) {
        fprintf(stderr, "hello: %s needs a value\n", opt);
        exit(2);
    }
    errno = 0;
    v = strtol(val, &end, 10);
    if (errno != 0 || *end != '\0' || end == val) {
        fprintf(stderr, "hello: bad value for %s: %s\n", opt, val);
        exit(2);
    }
    return (int)v;
}

static void read_stdin(void)
{
    unsigned char buf[4096];
    uint64_t h = FNV_OFFSET;
    unsigned long long total = 0;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            printf("stdin error: %s\n", strerror(errno));
            break;
        }
        if (n == 0)
            break;
        h = fnv1a(h, buf, (size_t)n);
        total += (unsigned long long)n;
    }
    printf("stdin_bytes=%llu stdin_fnv=%016llx\n", total, (unsigned long long)h);
}

static void write_fd(int fd)
{
    char line[64];
    int len = snprintf(line, sizeof line, "fd %d ok\n", fd);
    ssize_t n = write(fd, line, (size_t)len);
    if (n == len)
        printf("wrote fd %d\n", fd);
    else if (n < 0)
        printf("fd %d error: %s\n", fd, strerror(errno));
    else
        printf("fd %d error: short write (%zd of %d)\n", fd, n, len);
}

int main(int argc, char **argv)
{
    int exit_status = 0, want_stdin = 0, want_stderr = 0;
    int write_fd_num = -1, raise_sig = 0;
    char cwd[4096];
    const char *env;

    /* Options may appear anywhere; all arguments are still echoed below. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--exit") == 0)
            exit_status = int_arg(argv[i], argv[i + 1]);
        else if (strcmp(argv[i], "--stdin") == 0)
            want_stdin = 1;
        else if (strcmp(argv[i], "--write-fd") == 0)
            write_fd_num = int_arg(argv[i], argv[i + 1]);
        else if (strcmp(argv[i], "--raise") == 0)
            raise_sig = int_arg(argv[i], argv[i + 1]);
        else if (strcmp(argv[i], "--stderr") == 0)
            want_stderr = 1;
    }

    printf("hello from uprobe-exec sample\n");
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);

    env = getenv("SAMPLE_ENV");
    if (env != NULL)
        printf("SAMPLE_ENV=%s\n", env);

    if (getcwd(cwd, sizeof cwd) != NULL)
        printf("cwd=%s\n", cwd);
    else
        printf("cwd error: %s\n", strerror(errno));

    printf("checksum=%016llx\n", (unsigned long long)compute_checksum());

    if (want_stdin)
        read_stdin();
    if (write_fd_num >= 0) {
        fflush(stdout); /* keep our stdout ordered if fd N is stdout too */
        write_fd(write_fd_num);
    }
    if (want_stderr)
        fprintf(stderr, "to stderr\n");

    fflush(stdout);
    if (raise_sig != 0) {
        raise(raise_sig);
        /* Only reached if the signal did not kill us. */
        printf("raise(%d) returned\n", raise_sig);
        fflush(stdout);
    }
    return exit_status;
}
