/*
 * sites: code that probe placement must not break.
 *
 *   sites enter N   calls functions that are entered past their first
 *                   instruction from outside them N times each, and a
 *                   function of the same shape that nothing enters
 *   sites skip N    calls skip_ok N times; the other skip_* symbols cannot
 *                   be probed (ud2, int3, a zero-size marker outside the
 *                   text, as Go's runtime.etext) and are never run
 *   sites unwind N  N threads call lp_fn(i); lp_exit(i) ends the odd ones with
 *                   pthread_exit, whose unwinding runs lp_fn's landing pad
 *                   (lp_fn+0xb), which the even ones reach by falling through
 *                   from lp_fn+0x9; prints how often it ran
 *   sites long N    calls long_fn, whose symbol is "long_" and 69632 x's, and
 *                   short_fn N times each
 *   sites ind N     calls the ind_* functions N times each (below)
 *   sites pad N     calls the pad_* functions N times each (below)
 *   sites nosize N  calls the nosize_* functions N times each (below)
 *   sites rel8 N    calls the rel8_* functions and evict_me N times each (below)
 *   sites pun N     calls the pun_* and punned_* functions N times each (below)
 *
 * Each xe_* function starts with a 1-byte instruction (`cld`), so any jump
 * at its entry, even a 2-byte one, would cover the point at +1 where
 * something else enters it (rel8_entered, below, is entered at +2); and the
 * `lea eax, [rdi + 0x100]` after it (8d 87 00 01 00 00) would make a punned
 * jump land 16 MiB ahead, inside the program's heap:
 *   xe_target   a direct `jmp xe_target+1` in another function (xe_jumper),
 *               as static glibc's __mempcpy_* jumps into __memcpy_*+3
 *   xe_ptr      a pointer to xe_ptr+1 stored in data, called through it
 *   xe_table    entry 1 of another function's jump table (xe_dispatch)
 *   xe_label    a symbol (xe_label_inner) at +1
 *   xe_plain    starts with a 2-byte instruction, entered only there
 */
#include <pthread.h>
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
        "xe_target:\n cld\n lea eax, [rdi + 0x100]\n add eax, 1\n add eax, 2\n ret\n.size xe_target, .-xe_target\n"
        ".p2align 4\n.globl xe_jumper\n.type xe_jumper,@function\n"
        "xe_jumper:\n lea eax, [rdi + 100]\n jmp xe_target+1\n.size xe_jumper, .-xe_jumper\n"
        ".p2align 4\n.globl xe_ptr\n.type xe_ptr,@function\n"
        "xe_ptr:\n cld\n lea eax, [rdi + 0x100]\n add eax, 3\n add eax, 4\n ret\n.size xe_ptr, .-xe_ptr\n"
        ".p2align 4\n.globl xe_table\n.type xe_table,@function\n"
        "xe_table:\n cld\n lea eax, [rdi + 0x100]\n add eax, 5\n add eax, 6\n ret\n.size xe_table, .-xe_table\n"
        ".p2align 4\n.globl xe_dispatch\n.type xe_dispatch,@function\n"
        "xe_dispatch:\n mov eax, edi\n and edi, 1\n lea rcx, [rip + 5f]\n movsxd rdx, dword ptr [rcx + rdi * 4]\n"
        " add rcx, rdx\n jmp rcx\n.size xe_dispatch, .-xe_dispatch\n"
        ".section .rodata\n.p2align 2\n5:\n .long xe_table - 5b\n .long xe_table + 1 - 5b\n.text\n"
        ".p2align 4\n.globl xe_label\n.type xe_label,@function\n"
        "xe_label:\n cld\n.globl xe_label_inner\nxe_label_inner:\n lea eax, [rdi + 0x100]\n add eax, 7\n add eax, 8\n ret\n"
        ".size xe_label, .-xe_label\n"
        ".p2align 4\n.globl xe_plain\n.type xe_plain,@function\n"
        "xe_plain:\n mov eax, edi\n add eax, 9\n add eax, 10\n ret\n.size xe_plain, .-xe_plain\n"
        ".section .data.rel.ro,\"aw\"\n.p2align 3\n.globl xe_ptr_inner\nxe_ptr_inner:\n .quad xe_ptr + 1\n.text\n"
        ".att_syntax prefix\n");

/* Indirect jumps. A jump site is safe in a function with a `jmp reg` only
 * when the register holds a code pointer loaded from memory on every path
 * (then the jump lands where a stored pointer says, which the whole-program
 * scan knows):
 *   ind_tail  loads a pointer (on two paths that merge) and jumps through it
 *   ind_mem   jumps through a pointer in memory, `jmp [rax]`
 *   ind_arg   jumps to a pointer its caller passed (rsi): refused
 *   ind_back  loops back to ind_back+2 through a stored pointer: the jump
 *             is bounded, but the pointer enters a jump's displaced bytes
 *   ind_calc  jumps to a computed address (label + 8*(x&1)): refused
 *   ind_loop  a loop through its own relative jump table, whose base stays
 *             in rbx across the cases (reached by the table): a jump
 * (xe_dispatch's relative jump table, read whole, is bounded too.) */
uint64_t ind_tail(uint64_t);
uint64_t ind_mem(uint64_t);
uint64_t ind_arg(uint64_t, uint64_t (*)(uint64_t));
uint64_t ind_back(uint64_t);
uint64_t ind_calc(uint64_t);
uint64_t ind_loop(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl ind_tail\n.type ind_tail,@function\n"
        "ind_tail:\n push rbx\n mov rbx, rdi\n mov rax, [rip + ind_slot]\n test rbx, rbx\n jz 1f\n"
        " add rdi, 1\n1:\n pop rbx\n jmp rax\n.size ind_tail, .-ind_tail\n"
        ".p2align 4\n.globl ind_mem\n.type ind_mem,@function\n"
        "ind_mem:\n lea rax, [rip + ind_slot]\n add rdi, 2\n jmp qword ptr [rax]\n.size ind_mem, .-ind_mem\n"
        ".p2align 4\n.globl ind_arg\n.type ind_arg,@function\n"
        "ind_arg:\n mov rax, rsi\n add rdi, 3\n jmp rax\n.size ind_arg, .-ind_arg\n"
        ".p2align 4\n.globl ind_back\n.type ind_back,@function\n"
        "ind_back:\n xor eax, eax\n.Lind_back_loop:\n add eax, 1\n cmp eax, edi\n jae 1f\n"
        " mov rdx, [rip + ind_back_slot]\n jmp rdx\n1:\n ret\n.size ind_back, .-ind_back\n"
        ".p2align 4\n.globl ind_calc\n.type ind_calc,@function\n"
        "ind_calc:\n and edi, 1\n lea rax, [rip + .Lind_calc_0]\n shl rdi, 3\n add rax, rdi\n jmp rax\n"
        ".p2align 3\n.Lind_calc_0:\n mov eax, 50\n ret\n.p2align 3\n mov eax, 60\n ret\n"
        ".size ind_calc, .-ind_calc\n"
        ".p2align 4\n.globl ind_loop\n.type ind_loop,@function\n"
        "ind_loop:\n push rbx\n lea rbx, [rip + .Lind_loop_t]\n mov ecx, edi\n and ecx, 7\n xor eax, eax\n"
        ".Lind_loop_top:\n mov edx, ecx\n and edx, 1\n movsxd rdx, dword ptr [rbx + rdx * 4]\n add rdx, rbx\n jmp rdx\n"
        ".Lind_loop_c0:\n add eax, 2\n jmp .Lind_loop_next\n"
        ".Lind_loop_c1:\n add eax, 3\n"
        ".Lind_loop_next:\n sub ecx, 1\n jns .Lind_loop_top\n pop rbx\n ret\n"
        ".size ind_loop, .-ind_loop\n"
        ".section .rodata\n.p2align 2\n.Lind_loop_t:\n .long .Lind_loop_c0 - .Lind_loop_t\n"
        " .long .Lind_loop_c1 - .Lind_loop_t\n.text\n"
        ".section .data.rel.ro,\"aw\"\n.p2align 3\n"
        "ind_slot:\n .quad xe_plain\n"
        "ind_back_slot:\n .quad .Lind_back_loop\n.text\n"
        ".att_syntax prefix\n");

/* Functions shorter than 5 bytes. A jump may cover the alignment padding
 * after one when its last instruction never runs on into it and nothing
 * enters the padding:
 *   pad_ret     `mov eax, edi; ret` (3 bytes), then padding: a jump
 *   pad_tight   3 bytes, then pad_next at once (no padding): refused
 *   pad_next    4 bytes, then padding: a jump
 *   pad_target  4 bytes, then nops that pad_jumper jumps into: refused
 *   pad_jumper  jumps into the nops after pad_target */
uint64_t pad_ret(uint64_t);
uint64_t pad_tight(uint64_t);
uint64_t pad_next(uint64_t);
uint64_t pad_target(uint64_t);
uint64_t pad_jumper(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl pad_ret\n.type pad_ret,@function\n"
        "pad_ret:\n mov eax, edi\n ret\n.size pad_ret, .-pad_ret\n"
        ".p2align 4\n.globl pad_tight\n.type pad_tight,@function\n"
        "pad_tight:\n lea eax, [rdi]\n ret\n.size pad_tight, .-pad_tight\n"
        ".globl pad_next\n.type pad_next,@function\n"
        "pad_next:\n lea eax, [rdi + 1]\n ret\n.size pad_next, .-pad_next\n"
        ".p2align 4\n.globl pad_target\n.type pad_target,@function\n"
        "pad_target:\n lea eax, [rdi + 2]\n ret\n.size pad_target, .-pad_target\n"
        ".Lpad_in:\n nop\n nop\n nop\n lea eax, [rdi + 3]\n ret\n"
        ".p2align 4\n.globl pad_jumper\n.type pad_jumper,@function\n"
        "pad_jumper:\n add rdi, 4\n jmp .Lpad_in\n.size pad_jumper, .-pad_jumper\n"
        ".att_syntax prefix\n");

/* Function symbols without a size (hand-written assembly, crt files). The
 * code is taken to end at its last `ret` or `jmp` before the next symbol,
 * the padding after it aside:
 *   nosize_long   6 bytes, then padding: a jump
 *   nosize_fn     4 bytes, then padding: a jump over the padding
 *   nosize_outer  a sized function with nosize_inner at +2: refused
 *   nosize_inner  inside nosize_outer: refused
 *   nosize_fall   falls through into nosize_next: refused
 *   nosize_next   4 bytes, then padding: a jump over the padding */
uint64_t nosize_long(uint64_t);
uint64_t nosize_fn(uint64_t);
uint64_t nosize_outer(uint64_t);
uint64_t nosize_inner(uint64_t);
uint64_t nosize_fall(uint64_t);
uint64_t nosize_next(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl nosize_long\n.type nosize_long,@function\n"
        "nosize_long:\n mov eax, edi\n add eax, 11\n ret\n"
        ".p2align 4\n.globl nosize_fn\n.type nosize_fn,@function\n"
        "nosize_fn:\n lea eax, [rdi + 7]\n ret\n"
        ".p2align 4\n.globl nosize_outer\n.type nosize_outer,@function\n"
        "nosize_outer:\n mov eax, edi\n.globl nosize_inner\n.type nosize_inner,@function\n"
        "nosize_inner:\n lea eax, [rdi + 1]\n add eax, 2\n ret\n.size nosize_outer, .-nosize_outer\n"
        ".p2align 4\n.globl nosize_fall\n.type nosize_fall,@function\n"
        "nosize_fall:\n add edi, 1\n"
        ".globl nosize_next\n.type nosize_next,@function\n"
        "nosize_next:\n lea eax, [rdi + 1]\n ret\n"
        ".p2align 4\n"
        ".att_syntax prefix\n");

/* The rel8_* and pun_* functions: at the end of the file. */
uint64_t rel8_pad(uint64_t);
uint64_t rel8_pad_end(uint64_t);
uint64_t rel8_disp(uint64_t);
uint64_t rel8_host(uint64_t);
uint64_t rel8_evict(uint64_t);
uint64_t evict_me(uint64_t);
uint64_t rel8_entered(uint64_t);
uint64_t rel8_enter_host(uint64_t);
uint64_t rel8_at1(uint64_t);
uint64_t rel8_jump1(uint64_t);
uint64_t rel8_none(uint64_t);
void pun_ret(void);
uint64_t punned_next(uint64_t);
uint64_t pun_at1(uint64_t);
uint64_t pun_jump1(uint64_t);
void pun_none(void);
uint64_t punned_near(uint64_t);

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

/* lp_fn: an exception landing pad that is also reached by falling through,
 * so it lies inside the bytes a jump at lp_fn+9 would displace. Only the
 * LSDA (.gcc_except_table) says that the unwinder enters there. */
uint64_t lp_count;
NOINLINE void lp_exit(uint64_t x) {
    if (x & 1) pthread_exit(NULL);
}
uint64_t lp_fn(uint64_t);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl lp_fn\n.type lp_fn,@function\n"
        "lp_fn:\n .cfi_startproc\n"
        " .cfi_personality 0x9b, DW.ref.__gcc_personality_v0\n"
        " .cfi_lsda 0x1b, 1f\n"
        " push rbx\n .cfi_def_cfa_offset 16\n .cfi_offset rbx, -16\n"
        " mov rbx, rdi\n"
        "2:\n call lp_exit\n"
        "3:\n xor eax, eax\n"
        "4:\n add qword ptr [rip + lp_count], 1\n"
        " test rax, rax\n jnz 5f\n"
        " lea rax, [rbx + 1]\n pop rbx\n .cfi_remember_state\n .cfi_def_cfa_offset 8\n ret\n .cfi_restore_state\n"
        "5:\n mov rdi, rax\n call _Unwind_Resume\n"
        " .cfi_endproc\n.size lp_fn, .-lp_fn\n"
        /* One call site (the call of lp_exit), landing pad at 4:, cleanup only. */
        ".section .gcc_except_table,\"a\",@progbits\n"
        "1:\n .byte 0xff\n .byte 0xff\n .byte 0x1\n .uleb128 7f - 6f\n"
        "6:\n .uleb128 2b - lp_fn\n .uleb128 3b - 2b\n .uleb128 4b - lp_fn\n .uleb128 0\n7:\n"
        ".hidden DW.ref.__gcc_personality_v0\n.weak DW.ref.__gcc_personality_v0\n"
        ".section .data.rel.local.DW.ref.__gcc_personality_v0,\"awG\",@progbits,DW.ref.__gcc_personality_v0,comdat\n"
        ".p2align 3\n.type DW.ref.__gcc_personality_v0, @object\n.size DW.ref.__gcc_personality_v0, 8\n"
        "DW.ref.__gcc_personality_v0:\n .quad __gcc_personality_v0\n"
        ".text\n.att_syntax prefix\n");

static uint64_t lp_rets;
static void *lp_worker(void *arg) {
    lp_rets += lp_fn((uint64_t)(uintptr_t)arg);
    return NULL;
}

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
        fprintf(stderr, "usage: sites enter|unwind|skip|long|ind|pad|nosize|rel8|pun N\n");
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
    } else if (!strcmp(argv[1], "unwind")) {
        for (uint64_t i = 0; i < n; i++) {
            pthread_t t;
            if (pthread_create(&t, NULL, lp_worker, (void *)(uintptr_t)i) != 0) return 3;
            pthread_join(t, NULL);
        }
        printf("unwind=%llu landing_pad=%llu returns=%llu\n", (unsigned long long)n,
               (unsigned long long)lp_count, (unsigned long long)lp_rets);
    } else if (!strcmp(argv[1], "long")) {
        for (uint64_t i = 0; i < n; i++) acc += long_fn(i) + short_fn(i);
        printf("long_fn=%llu short_fn=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)n,
               (unsigned long long)acc);
    } else if (!strcmp(argv[1], "ind")) {
        for (uint64_t i = 0; i < n; i++)
            acc += ind_tail(i) + ind_mem(i) + ind_arg(i, xe_plain) + ind_back(i % 8 + 1) + ind_calc(i) +
                   ind_loop(i);
        printf("ind=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(argv[1], "pad")) {
        for (uint64_t i = 0; i < n; i++)
            acc += pad_ret(i) + pad_tight(i) + pad_next(i) + pad_target(i) + pad_jumper(i);
        printf("pad=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(argv[1], "nosize")) {
        for (uint64_t i = 0; i < n; i++)
            acc += nosize_long(i) + nosize_fn(i) + nosize_outer(i) + nosize_inner(i) +
                   nosize_fall(i) + nosize_next(i);
        printf("nosize=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(argv[1], "rel8")) {
        for (uint64_t i = 0; i < n; i++)
            acc += rel8_pad(i) + rel8_pad_end(i) + rel8_disp(i) + rel8_host(i) + rel8_evict(i) +
                   evict_me(i) + rel8_entered(i) + rel8_enter_host(i) + rel8_at1(i) + rel8_jump1(i) +
                   rel8_none(i);
        printf("rel8=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(argv[1], "pun")) {
        for (uint64_t i = 0; i < n; i++) {
            pun_ret();
            pun_none();
            acc += punned_next(i) + pun_at1(i) + pun_jump1(i) + punned_near(i);
        }
        printf("pun=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else if (!strcmp(argv[1], "skip")) {
        for (uint64_t i = 0; i < n; i++) acc += skip_ok(i);
        printf("skip_ok=%llu acc=%llu\n", (unsigned long long)n, (unsigned long long)acc);
    } else {
        fprintf(stderr, "usage: sites enter|unwind|skip|long|ind|pad|nosize|rel8|pun N\n");
        return 2;
    }
    return 0;
}

/* Functions too short for a 5-byte jump and packed against the next one,
 * each group between walls of ud2 (no function, no padding) wider than a
 * `jmp rel8` reaches. Each can take a 2-byte jump to a 5-byte one (a pad)
 * in bytes that no longer run:
 *   rel8_pad         4 bytes, rel8_pad_end at once: the pad goes in the
 *                    padding after rel8_pad_end (whose own jump covers
 *                    its first byte)
 *   rel8_disp        4 bytes, then rel8_host (a probe too): rel8_host's jump
 *                    displaces 11 bytes instead of 7, the pad goes past it
 *   rel8_evict       4 bytes, then evict_me (no probe): evict_me's first
 *                    11 bytes move out of line, the pad goes past its jump
 *   rel8_entered     entered at +2 by rel8_enter_host (a probe): 2 bytes
 *                    displaced, the pad in rel8_enter_host's bytes
 *   rel8_at1         entered at +1 by rel8_jump1 (a probe that could hold
 *                    a pad): even 2 bytes would cover that, and a punned
 *                    jump would land 16 MiB ahead (as xe_*): refused
 *   rel8_none        4 bytes between walls: no room, refused
 * (At the end of the file, so that the walls follow no other sample's
 * functions.) */
/* (Declared at the top, for main.) */
#define WALL ".fill 160, 2, 0x0b0f\n"
#define FN(name) ".globl " #name "\n.type " #name ",@function\n" #name ":\n"
#define END(name) ".size " #name ", .-" #name "\n"
__asm__(".intel_syntax noprefix\n.text\n.p2align 4\n" WALL
        FN(rel8_pad) " lea eax, [rdi + 1]\n ret\n" END(rel8_pad)
        FN(rel8_pad_end) " lea eax, [rdi + 2]\n ret\n" END(rel8_pad_end)
        ".p2align 4\n" WALL
        FN(rel8_disp) " lea eax, [rdi + 3]\n ret\n" END(rel8_disp)
        FN(rel8_host) " mov rax, rdi\n add rax, 5\n imul rax, rax, 3\n ret\n" END(rel8_host)
        WALL
        FN(rel8_evict) " lea eax, [rdi + 4]\n ret\n" END(rel8_evict)
        FN(evict_me) " mov rax, rdi\n add rax, 7\n imul rax, rax, 5\n ret\n" END(evict_me)
        WALL
        FN(rel8_entered) " mov eax, edi\n.Lrel8_in:\n add eax, 9\n ret\n" END(rel8_entered)
        FN(rel8_enter_host) " mov rax, rdi\n add rax, 11\n imul rax, rax, 7\n mov edi, eax\n"
        " jmp .Lrel8_in\n" END(rel8_enter_host)
        WALL
        FN(rel8_at1) " push rbx\n.Lrel8_at1:\n lea eax, [rdi + 0x100]\n pop rbx\n ret\n" END(rel8_at1)
        FN(rel8_jump1) " mov rax, rdi\n add rax, 13\n imul rax, rax, 3\n push rbx\n mov edi, eax\n"
        " jmp .Lrel8_at1\n" END(rel8_jump1)
        WALL
        FN(rel8_none) " lea eax, [rdi + 6]\n ret\n" END(rel8_none)
        WALL
        ".att_syntax prefix\n");

/* Punned jumps: sites where not even a 2-byte jump fits (1-byte functions,
 * a function entered at +1), between walls of ud2. A `jmp rel32` over the
 * site's bytes takes its rel32's high bytes from the instructions after it,
 * left as they are (`mov eax, 0x700000` is b8 00 00 70 00: rel32 0x700000b8,
 * about 1.75 GiB ahead, clear of the program and its heap in every variant):
 *   pun_ret      `ret`, then punned_next (no probe): a punned jump
 *   pun_at1      `push rbx`, then code that pun_jump1 (a probe) enters at +1,
 *                which the punned jump leaves as it is
 *   pun_none     `ret`, then punned_near, whose bytes make the jump land
 *                0x100b8 ahead, inside the program: refused */
__asm__(".intel_syntax noprefix\n.text\n.p2align 4\n" WALL
        FN(pun_ret) " ret\n" END(pun_ret)
        FN(punned_next) " mov eax, 0x700000\n add eax, edi\n ret\n" END(punned_next)
        WALL
        FN(pun_at1) " push rbx\n.Lpun_at1:\n mov eax, 0x700000\n add eax, edi\n pop rbx\n ret\n" END(pun_at1)
        FN(pun_jump1) " mov rax, rdi\n add rax, 1\n mov edi, eax\n push rbx\n jmp .Lpun_at1\n" END(pun_jump1)
        WALL
        FN(pun_none) " ret\n" END(pun_none)
        FN(punned_near) " mov eax, 0x100\n add eax, edi\n ret\n" END(punned_near)
        WALL
        ".att_syntax prefix\n");
