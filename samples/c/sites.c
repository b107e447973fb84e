/*
 * sites: code that probe placement must not break.
 *
 *   sites enter N   calls functions that are entered past their first
 *                   instruction from outside them N times each, and a
 *                   function of the same shape that nothing enters
 *   sites skip N    calls skip_ok N times; the other skip_* symbols cannot
 *                   be probed (ud2, int3, a zero-size marker outside the
 *                   text, as Go's runtime.etext) and are never run
 *   sites long N    calls long_fn, whose symbol is "long_" and 69632 x's, and
 *                   short_fn N times each
 *
 * Each xe_* function starts with a 2-byte instruction, so a 5-byte jump at
 * its entry would cover the point at +2 where something else enters it:
 *   xe_target   a direct `jmp xe_target+2` in another function (xe_jumper),
 *               as static glibc's __mempcpy_* jumps into __memcpy_*+3
 *   xe_ptr      a pointer to xe_ptr+2 stored in data, called through it
 *   xe_table    entry 1 of another function's jump table (xe_dispatch)
 *   xe_label    a symbol (xe_label_inner) at +2
 *   xe_plain    same shape, entered only at its first byte
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t xe_target(uint64_t);
uint64_t xe_jumper(uint64_t);
uint64_t xe_ptr(uint64_t);
uint64_t xe_table(uint64_t);
uint64_t xe_dispatch(uint64_t);
uint64_t xe_label(uint64_t);
uint64_t xe_plain(uint64_t);
extern uint64_t (*xe_ptr_inner)(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl xe_target\n.type xe_target,@function\n"
        "xe_target:\n mov eax, edi\n add eax, 1\n add eax, 2\n ret\n.size xe_target, .-xe_target\n"
        ".p2align 4\n.globl xe_jumper\n.type xe_jumper,@function\n"
        "xe_jumper:\n lea eax, [rdi + 100]\n jmp xe_target+2\n.size xe_jumper, .-xe_jumper\n"
        ".p2align 4\n.globl xe_ptr\n.type xe_ptr,@function\n"
        "xe_ptr:\n mov eax, edi\n add eax, 3\n add eax, 4\n ret\n.size xe_ptr, .-xe_ptr\n"
        ".p2align 4\n.globl xe_table\n.type xe_table,@function\n"
        "xe_table:\n mov eax, edi\n add eax, 5\n add eax, 6\n ret\n.size xe_table, .-xe_table\n"
        ".p2align 4\n.globl xe_dispatch\n.type xe_dispatch,@function\n"
        "xe_dispatch:\n mov eax, edi\n and edi, 1\n lea rcx, [rip + 5f]\n movsxd rdx, dword ptr [rcx + rdi * 4]\n"
        " add rcx, rdx\n jmp rcx\n.size xe_dispatch, .-xe_dispatch\n"
        ".section .rodata\n.p2align 2\n5:\n .long xe_table - 5b\n .long xe_table + 2 - 5b\n.text\n"
        ".p2align 4\n.globl xe_label\n.type xe_label,@function\n"
        "xe_label:\n mov eax, edi\n.globl xe_label_inner\nxe_label_inner:\n add eax, 7\n add eax, 8\n ret\n"
        ".size xe_label, .-xe_label\n"
        ".p2align 4\n.globl xe_plain\n.type xe_plain,@function\n"
        "xe_plain:\n mov eax, edi\n add eax, 9\n add eax, 10\n ret\n.size xe_plain, .-xe_plain\n"
        ".section .data.rel.ro,\"aw\"\n.p2align 3\n.globl xe_ptr_inner\nxe_ptr_inner:\n .quad xe_ptr + 2\n.text\n"
        ".att_syntax prefix\n");

uint64_t skip_ok(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl skip_ok\n.type skip_ok,@function\n"
        "skip_ok:\n lea rax, [rdi + 1]\n ret\n.size skip_ok, .-skip_ok\n"
        ".p2align 4\n.globl skip_ud2\n.type skip_ud2,@function\n"
        "skip_ud2:\n ud2\n.size skip_ud2, .-skip_ud2\n"
        ".p2align 4\n.globl skip_int3\n.type skip_int3,@function\n"
        "skip_int3:\n int3\n ret\n.size skip_int3, .-skip_int3\n"
        ".section .rodata\n.globl skip_marker\n.type skip_marker,@function\n"
        "skip_marker:\n.size skip_marker, 0\n"
        " .byte 0x90\n.text\n"
        ".att_syntax prefix\n");

#define NOINLINE __attribute__((noinline))
#define X8 "xxxxxxxx"
#define X64 X8 X8 X8 X8 X8 X8 X8 X8
#define X512 X64 X64 X64 X64 X64 X64 X64 X64
#define X4K X512 X512 X512 X512 X512 X512 X512 X512
#define X32K X4K X4K X4K X4K X4K X4K X4K X4K
NOINLINE uint64_t long_fn(uint64_t x) __asm__("long_" X32K X32K X4K);
NOINLINE uint64_t long_fn(uint64_t x) { return x * 3 + 1; }
NOINLINE uint64_t short_fn(uint64_t x) { return x * 5 + 2; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sites enter|skip|long N\n");
        return 2;
    }
    uint64_t n = strtoull(argv[2], NULL, 0), acc = 0;
    if (!strcmp(argv[1], "enter")) {
        uint64_t s[6] = {0};
        for (uint64_t i = 0; i < n; i++) {
            s[0] += xe_target(i);
            s[1] += xe_jumper(i);
            s[2] += xe_ptr(i) + xe_ptr_inner(i);
            s[3] += xe_table(i) + xe_dispatch(i);
            s[4] += xe_label(i);
            s[5] += xe_plain(i);
        }
        printf("enter=%llu target=%llu jumper=%llu ptr=%llu table=%llu label=%llu plain=%llu\n",
               (unsigned long long)n, (unsigned long long)s[0], (unsigned long long)s[1],
               (unsigned long long)s[2], (unsigned long long)s[3], (unsigned long long)s[4],
               (unsigned long long)s[5]);
    } else if (!strcmp(argv[1], "long")) {
        for (uint64_t i = 0; i < n; i++) acc += long_fn(i) + short_fn(i);
        printf("long_fn=%llu short_fn=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)n,
               (unsigned long long)acc);
    } else if (!strcmp(argv[1], "skip")) {
        for (uint64_t i = 0; i < n; i++) acc += skip_ok(i);
        printf("skip_ok=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else {
        fprintf(stderr, "usage: sites enter|skip|long N\n");
        return 2;
    }
    return 0;
}
