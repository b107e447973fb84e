//! Address-space randomisation, decided the way `execve` decides it.
//!
//! The kernel randomises a program's layout when `randomize_va_space` is not
//! 0 and the process's personality lacks `ADDR_NO_RANDOMIZE` (`setarch -R`).
//! The program's stack and mmap base are inherited from our own process,
//! whose `execve` randomised them by the same rules; this module supplies
//! the rest (fs/binfmt_elf.c `load_elf_binary`, arch/x86 `arch_mmap_rnd`,
//! `arch_randomize_brk`, `arch_align_stack`):
//!
//! | what | randomised by |
//! | --- | --- |
//! | PIE load bias | `ELF_ET_DYN_BASE + (rnd & (2^mmap_rnd_bits - 1)) pages`, aligned to the largest `p_align` |
//! | static-pie load address | the mmap area (inherited base) |
//! | brk start | `randomize_page(end + 1 page, 1 GiB)`; at `ELF_ET_DYN_BASE` for static-pie (only when `randomize_va_space` is 2) |
//! | stack top | inherited; below it, up to 8 KiB of random padding |

use uprobe_runtime::PAGE_SIZE;

/// `ELF_ET_DYN_BASE` on x86-64: two thirds of the 47-bit address space.
pub const ELF_ET_DYN_BASE: u64 = 0x7fff_ffff_f000 / 3 * 2;

/// `ADDR_NO_RANDOMIZE` (linux/personality.h).
const ADDR_NO_RANDOMIZE: u32 = 0x0040000;

/// How this process's programs are randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aslr {
    /// `PF_RANDOMIZE`: mmap, stack and PIE randomisation.
    pub on: bool,
    /// brk randomisation too (`randomize_va_space` 2).
    pub brk: bool,
    /// `vm.mmap_rnd_bits`.
    pub mmap_rnd_bits: u32,
}

impl Aslr {
    /// What `execve` would do in this process now.
    #[must_use]
    pub fn current() -> Aslr {
        let persona = crate::sys::process::personality();
        let level = read_number("/proc/sys/kernel/randomize_va_space").unwrap_or(2);
        let on = persona & ADDR_NO_RANDOMIZE == 0 && level != 0;
        Aslr {
            on,
            brk: on && level > 1,
            // Root-only on some systems; 28 is x86-64's default.
            mmap_rnd_bits: read_number("/proc/sys/vm/mmap_rnd_bits")
                .map_or(28, |b| b.clamp(8, 32) as u32),
        }
    }

    /// Layout without randomisation.
    #[must_use]
    pub fn off() -> Aslr {
        Aslr {
            on: false,
            brk: false,
            mmap_rnd_bits: 28,
        }
    }

    /// `arch_mmap_rnd`: a random page-aligned offset of `mmap_rnd_bits` pages.
    #[must_use]
    pub fn mmap_rnd(&self) -> u64 {
        if !self.on {
            return 0;
        }
        (random() & ((1u64 << self.mmap_rnd_bits) - 1)) * PAGE_SIZE
    }

    /// The PIE load bias for a program whose lowest `PT_LOAD` page is
    /// `min_vaddr` and whose largest power-of-two `p_align` is `align`.
    #[must_use]
    pub fn pie_bias(&self, min_vaddr: u64, align: u64) -> u64 {
        let mut base = ELF_ET_DYN_BASE + self.mmap_rnd();
        if align.is_power_of_two() && align > PAGE_SIZE {
            base &= !(align - 1);
        }
        (base.wrapping_sub(min_vaddr)) & !(PAGE_SIZE - 1)
    }

    /// Where brk starts, for a program whose image ends at `end` (page
    /// aligned); `static_pie` moves it to `ELF_ET_DYN_BASE` as the kernel does.
    #[must_use]
    pub fn brk_start(&self, end: u64, static_pie: bool) -> u64 {
        let brk = if static_pie {
            page_align(ELF_ET_DYN_BASE)
        } else {
            end
        };
        if !self.brk {
            return brk;
        }
        let brk = if static_pie { brk } else { brk + PAGE_SIZE };
        brk + (random() % ((1u64 << 30) / PAGE_SIZE)) * PAGE_SIZE
    }

    /// `arch_align_stack`: random bytes (a multiple of 16, below 8 KiB)
    /// left between the strings at the top of the stack and the rest.
    #[must_use]
    pub fn stack_pad(&self) -> u64 {
        if self.on {
            (random() % 8192) & !15
        } else {
            0
        }
    }
}

fn page_align(x: u64) -> u64 {
    (x + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    // getrandom on 8 bytes does not fail once the pool is ready; if it did,
    // the fallback still varies per run.
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_randomisation_the_kernel_constants_come_out() {
        let a = Aslr::off();
        assert_eq!(a.pie_bias(0, 0x1000), 0x5555_5555_4000);
        assert_eq!(a.brk_start(0x40_5000, false), 0x40_5000);
        assert_eq!(a.brk_start(0x7f00_0000_0000, true), 0x5555_5555_5000);
        assert_eq!(a.stack_pad(), 0);
    }

    #[test]
    fn randomised_values_stay_in_the_kernels_ranges() {
        let a = Aslr {
            on: true,
            brk: true,
            mmap_rnd_bits: 28,
        };
        let biases: Vec<u64> = (0..64).map(|_| a.pie_bias(0, 0x20_0000)).collect();
        for &b in &biases {
            assert!((0x5555_5540_0000..0x5555_5555_4000 + (1 << 40)).contains(&b));
            assert_eq!(b % 0x20_0000, 0);
        }
        assert!(biases.windows(2).any(|w| w[0] != w[1]));
        for _ in 0..64 {
            let brk = a.brk_start(0x40_5000, false);
            assert!(brk > 0x40_5000 && brk < 0x40_6000 + (1 << 30));
            assert_eq!(brk % PAGE_SIZE, 0);
            let pad = a.stack_pad();
            assert!(pad < 8192 && pad.is_multiple_of(16));
        }
    }
}
