/*
 * selfmem.c - reads its own never-run text through /proc/self/mem, as a
 * debugger reads a process, and compares it with the bytes in its file.
 *
 *   selfmem [MS] [pid]
 *
 * Waits MS milliseconds (default 100; a debugger attaches some time after
 * the start), then reads the first 64 bytes of cold_fn(), which never runs,
 * through /proc/self/mem, and the same bytes from its own file (argv[0], as
 * given), and prints whether they are the same or the read's error. With
 * "pid", first prints "pid N" (for a debugger to attach while it waits).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* cold_fn() fills a page of its own (the rest is int3), so no code that
 * runs shares its page. */
__asm__(".pushsection .text.selfmem_cold,\"ax\",@progbits\n"
        ".p2align 12\n"
        ".globl cold_fn\n"
        ".type cold_fn,@function\n"
        "cold_fn:\n"
        "    lea 0x2a(%rdi), %rax\n"
        "    imul %rdi, %rax\n"
        "    ret\n"
        ".size cold_fn, .-cold_fn\n"
        ".skip 4096 - (. - cold_fn), 0xcc\n"
        ".popsection\n");
unsigned long cold_fn(unsigned long x);

static uintptr_t bias;
static int first(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    bias = info->dlpi_addr;
    return 1;
}

/* File offset of link-time address `a`, from the file's program headers. */
static long offset_of(int fd, uint64_t a)
{
    Elf64_Ehdr eh;
    if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh)
        return -1;
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        if (pread(fd, &ph, sizeof ph, eh.e_phoff + (uint64_t)i * eh.e_phentsize) != (ssize_t)sizeof ph)
            return -1;
        if (ph.p_type == PT_LOAD && a >= ph.p_vaddr && a < ph.p_vaddr + ph.p_filesz)
            return (long)(a - ph.p_vaddr + ph.p_offset);
    }
    return -1;
}

int main(int argc, char **argv)
{
    long ms = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    if (argc > 2 && !strcmp(argv[2], "pid")) {
        printf("pid %d\n", (int)getpid());
        fflush(stdout);
    }
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);

    dl_iterate_phdr(first, NULL);
    uintptr_t at = (uintptr_t)&cold_fn;
    unsigned char mem[64], file[64];

    int fd = open(argv[0], O_RDONLY);
    long off = fd < 0 ? -1 : offset_of(fd, at - bias);
    if (off < 0 || pread(fd, file, sizeof file, off) != (ssize_t)sizeof file) {
        printf("cannot read cold_fn from %s\n", argv[0]);
        return 1;
    }
    int mfd = open("/proc/self/mem", O_RDONLY);
    if (mfd < 0) {
        printf("open /proc/self/mem: %s\n", strerror(errno));
        return 1;
    }
    ssize_t n = pread(mfd, mem, sizeof mem, (off_t)at);
    if (n != (ssize_t)sizeof mem) {
        printf("/proc/self/mem at cold_fn: %s\n", n < 0 ? strerror(errno) : "short read");
        return 1;
    }
    printf("cold_fn: %s as in the file\n", memcmp(mem, file, sizeof mem) ? "NOT the same" : "the same");
    return 0;
}
