/*
 * plugin: the shared object libcalls dlopens (libplugin.so, built with
 * -shared -fPIC by build.rs). plugin_fn is called only from outside: it
 * neither calls itself nor is called by anything in here.
 */
// build-kind: shared libplugin.so
// build-flags: -Wl,-soname,libplugin.so

int plugin_fn(int x);

int plugin_fn(int x) {
    unsigned h = 2166136261u ^ (unsigned)x;
    for (int i = 0; i < 4 + (x & 3); i++) {
        h ^= h >> 13;
        h *= 16777619u;
        h += (unsigned)i * 0x9e3779b9u;
    }
    return (int)(h & 0x7fffffffu);
}

/* The bench's hit site in a shared object: the same code as the probed
 * sample's hit_push, so a hit here and one there cost the same natively. */
unsigned long plugin_hit(unsigned long);
__asm__(".intel_syntax noprefix\n.text\n"
        ".p2align 4\n.globl plugin_hit\n.type plugin_hit,@function\n"
        "plugin_hit:\n push rbp\n mov rbp, rsp\n lea rax, [rdi + 1]\n pop rbp\n ret\n"
        ".size plugin_hit, .-plugin_hit\n.att_syntax prefix\n");
