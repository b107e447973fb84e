//! The probes of one session, as the monitor holds them: the sites, how each
//! is displaced, their hit counters and the probe area mapped near the text.

use std::sync::Arc;

use uprobe_runtime::counters::Counters;
use uprobe_runtime::{trap, PAGE_SIZE};

use super::command::ProbeMode;
use crate::error::{Error, Result};
use crate::plan::{Plan, ProbeArea};
use crate::probes::{self, Site, SLOT_BYTES};
use crate::report::{ProbeHits, ProcessHits};

/// Processes whose hits are counted one by one; hits of processes beyond
/// that count only in the totals.
pub(super) const ROWS: usize = 256;

/// The probes of one session: sites, their counters and the probe area.
pub(super) struct Probes {
    sites: Vec<Site>,
    /// How each site is displaced.
    kinds: Vec<probes::Kind>,
    /// Counter 0 counts stray traps; counter i+1 the hits of site i in
    /// processes beyond the per-process rows; the four words after the last
    /// site hold the program's own SIGTRAP sigaction; then the rows.
    pub(super) counters: Arc<Counters>,
    pub(super) area: ProbeArea,
    /// The seccomp filter guarding the trap handler.
    pub(super) filter: Vec<libc::sock_filter>,
    /// `rt_sigaction(SIGTRAP)` calls the guard refused (caller unreadable).
    pub(super) refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Probes {
    /// Chooses how each site is displaced, encodes its slot (out-of-line
    /// instruction or trampoline), maps the probe area near the text, and
    /// has the plan serve the patched pages.
    ///
    /// The patches are fixed before the program starts, so a page that is
    /// dropped and faults again gets the same jump: no thread can be inside
    /// the displaced bytes of a page that was not there. (A probe added to a
    /// page already served would have to be an int3: a thread could be
    /// stopped inside the bytes a jump displaces.)
    pub(super) fn build(
        plan: &mut Plan,
        sites: Vec<Site>,
        mode: ProbeMode,
        skipped: &mut Vec<(String, String)>,
    ) -> Result<Option<Probes>> {
        let mut check = probes::JumpCheck::default();
        let mut kept = Vec::with_capacity(sites.len());
        let mut kinds = Vec::with_capacity(sites.len());
        for (i, s) in sites.iter().enumerate() {
            // A jump must not cover another probe's site (sites are sorted).
            let covers = |len: usize| {
                sites
                    .get(i + 1)
                    .is_some_and(|next| next.addr.0 < s.addr.0 + len as u64)
            };
            let verdict = check.check(&plan.program.image, s).and_then(|k| match k {
                probes::Kind::Jump { len, .. } if covers(len) => Err(format!(
                    "its displaced bytes would cover the probe at {}",
                    sites[i + 1].label()
                )),
                k => Ok(k),
            });
            let kind = match (mode, verdict) {
                (ProbeMode::Int3, _) => probes::Kind::Int3,
                (_, Ok(k)) => k,
                // An int3 cannot be made safe (README, "Int3 sites"): a
                // pattern skips the site, a named site is an error.
                (ProbeMode::Auto, Err(why)) if is_pattern(&s.spec) => {
                    skipped.push((s.label(), why));
                    continue;
                }
                (ProbeMode::Auto, Err(why)) => {
                    return Err(Error::UnsafeSite {
                        site: s.label(),
                        why,
                    });
                }
                (ProbeMode::Jump, Err(why)) => {
                    return Err(Error::Probe(probes::ProbeError::NoJump {
                        site: s.label(),
                        why,
                    }));
                }
            };
            kept.push(s.clone());
            kinds.push(kind);
        }
        if kept.is_empty() {
            return Ok(None);
        }
        let sites = kept;
        let n = sites.len();
        // stray │ n hits │ the program's sigaction (4) │ ROWS rows of (pid, n hits)
        let counters = Arc::new(
            Counters::new(n + 5 + ROWS * (n + 1))
                .map_err(|e| Error::sys("creating the hit counters", e))?,
        );
        let code = trap::code();
        let traps = kinds.iter().filter(|k| **k == probes::Kind::Int3).count();
        let table_len = trap::HEADER_BYTES + trap::ENTRY_BYTES * traps;
        let slots_at = (code.len() + table_len).next_multiple_of(16);
        let len = slots_at + SLOT_BYTES * n;
        let bias = plan.program.bias;
        let len_code = len.next_multiple_of(PAGE_SIZE as usize);
        let mut patches = Vec::with_capacity(n);
        let area = plan.map_probe_area(len, |base| {
            let mut bytes = vec![0xcc; len];
            bytes[..code.len()].copy_from_slice(code);
            let mut table = Vec::with_capacity(traps);
            for (i, (s, kind)) in sites.iter().zip(&kinds).enumerate() {
                let slot = base + (slots_at + i * SLOT_BYTES) as u64;
                let ip = probes::runtime(s, bias);
                let from = probes::site_bytes(&plan.program.image, s);
                let not_relocatable = |why| {
                    Error::Probe(probes::ProbeError::NotRelocatable {
                        site: s.label(),
                        insn: String::new(),
                        why,
                    })
                };
                let enc = match *kind {
                    probes::Kind::Int3 => {
                        table.push(trap::TrapSite {
                            site: ip,
                            slot,
                            counter: counters.addr_of(i + 1),
                            index: i as u64,
                        });
                        patches.push((ip, vec![0xcc]));
                        probes::encode_slot(from, ip, slot).map_err(not_relocatable)?
                    }
                    probes::Kind::Jump { len, flags_live } => {
                        patches.push((ip, probes::jump_patch(ip, len, slot)));
                        let count = probes::Counting {
                            counter: counters.addr_of(i + 1),
                            index: i as u64,
                            cache: base + len_code as u64,
                        };
                        probes::encode_trampoline(from, ip, len, flags_live, &count, slot)
                            .map_err(not_relocatable)?
                    }
                };
                bytes[slots_at + i * SLOT_BYTES..][..enc.len()].copy_from_slice(&enc);
            }
            let per = trap::PerProcess {
                rows: counters.addr_of(n + 5),
                count: ROWS as u64,
                stride: 8 * (n as u64 + 1),
                cache: base + len_code as u64,
            };
            let t = trap::table(&table, counters.addr_of(0), counters.addr_of(n + 1), per);
            bytes[code.len()..code.len() + t.len()].copy_from_slice(&t);
            Ok((bytes, 0, trap::restorer_offset() as u64))
        })?;
        plan.patch(&patches);
        let filter = if traps > 0 {
            crate::guard::filter(area.reservation.addr, area.reservation.end())
        } else {
            Vec::new()
        };
        Ok(Some(Probes {
            sites,
            kinds,
            counters,
            area,
            filter,
            refused: Arc::default(),
        }))
    }

    /// Whether any site traps (and so needs the trap handler and its guard).
    pub(super) fn traps(&self) -> bool {
        self.kinds.contains(&probes::Kind::Int3)
    }

    /// What the guard thread needs.
    pub(super) fn guard_target(&self) -> crate::guard::Target {
        crate::guard::Target {
            counters: Arc::clone(&self.counters),
            program_action: self.counters.addr_of(self.sites.len() + 1),
            handler: self.area.handler,
            refused: Arc::clone(&self.refused),
        }
    }

    /// Gives each process of the program its row of hit counters, when it
    /// first touches its row page (see the fault server): rows in the order
    /// processes first hit a probe, until none is left.
    pub(super) fn row_assigner(
        &self,
        first_pid: i32,
    ) -> impl FnMut(usize, u32) -> Option<(u64, u64)> + Send {
        let counters = Arc::clone(&self.counters);
        let n = self.sites.len();
        let mut next = 0usize;
        move |m, tid| {
            if next == ROWS {
                return None;
            }
            let pid = if m == 0 {
                first_pid as u64
            } else {
                tgid_of(tid).unwrap_or(u64::from(tid))
            };
            let row = n + 5 + next * (n + 1);
            next += 1;
            counters.set(row, pid);
            Some((pid, counters.addr_of(row)))
        }
    }

    /// All hits of site `i`: every process's row, plus the overflow counter.
    fn total(&self, i: usize) -> u64 {
        let n = self.sites.len();
        let rows: u64 = (0..ROWS)
            .map(|r| n + 5 + r * (n + 1))
            .take_while(|&row| self.counters.get(row) != 0)
            .map(|row| self.counters.get(row + 1 + i))
            .sum();
        rows + self.counters.get(i + 1)
    }

    /// Hits per process (pid), from the rows the trap handler fills.
    pub(super) fn per_process(&self) -> Vec<ProcessHits> {
        let n = self.sites.len();
        let labels: Vec<String> = self.sites.iter().map(Site::label).collect();
        (0..ROWS)
            .filter_map(|r| {
                let row = n + 5 + r * (n + 1);
                let pid = self.counters.get(row);
                if pid == 0 {
                    return None;
                }
                let hits = (0..n)
                    .map(|i| (i, self.counters.get(row + 1 + i)))
                    .filter(|&(_, c)| c > 0)
                    .map(|(i, c)| (labels[i].clone(), c))
                    .collect();
                Some(ProcessHits {
                    pid: pid as i64,
                    hits,
                })
            })
            .collect()
    }

    pub(super) fn hits(&self) -> Vec<ProbeHits> {
        self.sites
            .iter()
            .enumerate()
            .map(|(i, s)| ProbeHits {
                spec: s.spec.clone(),
                symbol: s.symbol.clone(),
                offset: s.offset,
                address: format!("{:#x}", s.addr.0),
                hits: self.total(i),
                kind: self.kinds[i].name().into(),
            })
            .collect()
    }
}

/// Whether a probe spec is a pattern (which may skip what it cannot probe).
fn is_pattern(spec: &str) -> bool {
    spec.contains(['*', '?', '['])
}

/// The process a thread belongs to.
fn tgid_of(tid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}
