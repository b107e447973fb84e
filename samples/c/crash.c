/*
 * crash.c - a program that crashes, for core dump tests.
 *
 *   crash N
 *
 * Calls the non-inlined function crunch() N times, prints the result, then
 * writes through a null pointer in crash_here() and dies of SIGSEGV.
 * never_called() and far_fn() are never run; far_fn() fills a page of its
 * own, so that page is never touched.
 */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) unsigned long crunch(unsigned long x)
{
    for (int i = 0; i < 8; i++)
        x = (x ^ (x >> 7)) * 0x100000001b3ULL + (unsigned long)i;
    return x;
}

__attribute__((noinline)) unsigned long never_called(unsigned long x)
{
    unsigned long y = x;
    for (int i = 0; i < 13; i++)
        y = y * 6364136223846793005ULL + 1442695040888963407ULL + (y >> 29);
    return y ^ x;
}

__asm__(".pushsection .text.crash_far,\"ax\",@progbits\n"
        ".p2align 12\n"
        ".globl far_fn\n"
        ".type far_fn,@function\n"
        "far_fn:\n"
        "    lea 0x2a(%rdi), %rax\n"
        "    imul %rdi, %rax\n"
        "    ret\n"
        ".size far_fn, .-far_fn\n"
        ".skip 4096 - (. - far_fn), 0xcc\n"
        ".popsection\n");
unsigned long far_fn(unsigned long x);

__attribute__((noinline)) void crash_here(unsigned long v)
{
    volatile unsigned long *volatile p = 0;
    *p = v;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1;
    unsigned long acc = 1;
    for (unsigned long i = 0; i < n; i++)
        acc = crunch(acc);
    printf("acc=%lx\n", acc);
    fflush(stdout);
    if (argc > 2)
        acc = never_called(far_fn(acc));
    crash_here(acc);
    return 0;
}
