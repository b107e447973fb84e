//! The probes of one session, as the monitor holds them: the sites, how each
//! is displaced, their hit counters and the probe area mapped near the text.

use std::sync::Arc;

use uprobe_runtime::area::{self, Shared, SharedLayout};

use super::shared_objects::ObjectNeeds;
use crate::error::{Error, Result};
use crate::plan::{Draft, ObjectsArea, Plan, ProbeArea};
use crate::probes::{self, Kind, ProbeMode, Request, Resolution, Site, Tid};
use uprobe_runtime::events::RingLayout;

/// Records in the event ring by default (a power of two): 16 Ki records
/// of 128 bytes are 2 MiB, which the stage maps in the program before it
/// starts (about 1 ms here; 8 MiB took 14 ms). They hold 8 ms of events
/// at the drain's 2 M/s, four of its idle naps.
pub const DEFAULT_EVENT_RING: usize = 1 << 14;
use crate::report::{ProbeHits, ProcessHits};
use crate::sys::mm::Reservation;

/// The probes of one session: sites, their counters and the probe area.
pub(super) struct Probes {
    /// What was asked for (the report repeats each site's spec).
    requests: Vec<Request>,
    /// The sites, in site-number order (slot, counter and row column `i`
    /// are site `i`'s).
    sites: Vec<Site>,
    /// The probe area's shared memory: stray traps, the program's own
    /// SIGTRAP action, the hit counters (see `uprobe_runtime::area`).
    pub(super) counters: Arc<Shared>,
    pub(super) area: ProbeArea,
    /// The pages of punned jumps' landings (see `probes::pun`).
    pub(super) landings: Vec<Reservation>,
    /// The timing stacks' table, when a function is timed (`--latency`).
    pub(super) table: Option<uprobe_runtime::latency::Table>,
    /// The seccomp filter guarding the trap handler.
    pub(super) filter: Vec<libc::sock_filter>,
    /// The path of the object the sites are in (the program).
    object: String,
    /// `rt_sigaction(SIGTRAP)` calls the guard refused (caller unreadable).
    pub(super) refused: Arc<std::sync::atomic::AtomicU64>,
    /// The first counter column of the shared objects' sites (after the
    /// program's).
    pub(super) object_columns: usize,
    /// The first statistics slot of the shared objects' timed functions.
    pub(super) object_stats: usize,
    /// What the shared objects' trampolines call, in their probe area.
    pub(super) object_calls: Option<probes::ObjectCalls>,
    /// Shared objects may get int3 sites.
    object_traps: bool,
}

impl Probes {
    /// Chooses how each place is displaced, decides where the probe area
    /// goes, generates its code for that address, maps it, and makes the
    /// plan with the patched pages. Without sites, just the plan.
    ///
    /// The patches are fixed before the program starts, so a page that is
    /// dropped and faults again gets the same jump: no thread can be inside
    /// the displaced bytes of a page that was not there. (A probe added to a
    /// page already served would have to be an int3: a thread could be
    /// stopped inside the bytes a jump displaces.)
    ///
    /// `since` is a (counter, clock) pair read when the start began: the
    /// counter's rate, which timed functions need, is measured from it.
    /// With `objects`, the shared objects' probe area and what their probes
    /// need: counter columns, statistics slots and an event ring are kept
    /// for them (their trampolines are made while the program runs), and
    /// the routines those call are written to that area now.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        draft: Draft,
        resolution: Resolution,
        chosen: probes::Chosen,
        mode: ProbeMode,
        ring_records: usize,
        since: (u64, u64),
        objects: Option<(&mut ObjectsArea, ObjectNeeds)>,
        tid: Tid,
        skipped: &mut Vec<(String, String)>,
        unseen: &mut Vec<(String, String)>,
    ) -> Result<(Plan, Option<Probes>)> {
        let needs = objects.as_ref().map(|(_, n)| *n).unwrap_or_default();
        let columns = needs.columns;
        if resolution.places.is_empty() && columns == 0 {
            return Ok((draft.finish(&[]), None));
        }
        skipped.extend(chosen.skipped);
        unseen.extend(chosen.unseen);
        let evicted = chosen.evicted;
        let (sites, mut landings) =
            reserve_landings(chosen.sites, &draft, &resolution, mode, skipped)?;
        if sites.is_empty() && columns == 0 {
            return Ok((draft.finish(&[]), None));
        }
        // A return probe's records go in the ring too, and its value may
        // be a string.
        let returns = |s: &Site| s.timed.is_some() && s.place.ret.is_some();
        let ret_type = |s: &Site| s.place.ret.and_then(|r| resolution.requests[r].ret);
        let traced = needs.traced || sites.iter().any(|s| s.action.traced() || returns(s));
        let strings = needs.strings
            || sites.iter().any(|s| {
                s.action.strings() != 0 || (returns(s) && ret_type(s) == Some(probes::ArgType::Str))
            });
        let own_timed = sites.iter().filter(|s| s.timed.is_some()).count();
        let timed = own_timed + needs.timed;
        // Stack slots for the CPUs we may run on (the program inherits
        // our affinity); an event ring when any site is traced.
        let mut shared = SharedLayout::new(
            sites.len() + columns,
            area::ROWS,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        if traced {
            let room = if strings {
                uprobe_runtime::events::ARGS
            } else {
                0
            };
            shared = shared.with_ring(RingLayout::new(
                ring_records.max(1),
                room,
                sites.len() + columns,
            ));
        }
        shared = shared.with_latency(timed);
        let counters =
            Arc::new(Shared::new(shared).map_err(|e| Error::sys("creating the hit counters", e))?);
        // Each traced return is written as its entry's site.
        for (i, s) in sites.iter().enumerate().filter(|(_, s)| returns(s)) {
            let f = s.timed.expect("a return probe's function is timed");
            // (As the kernel's `x64`, hex when no type is given.)
            let ty = ret_type(s).unwrap_or(probes::ArgType::Hex);
            trace_returns(&counters, f, i, ty);
        }
        let traps = sites.iter().filter(|s| s.kind == Kind::Int3).count();
        let mut layout = uprobe_runtime::trap::layout(sites.len() + evicted.len(), traps);
        let routines = if traced { probes::EMIT_BYTES } else { 0 }
            + if timed == 0 { 0 } else { probes::LATENCY_BYTES };
        if routines > 0 {
            layout = layout.with_emit(routines);
        }
        let (table, timing) = if timed == 0 {
            (None, None)
        } else {
            timing(&counters, since)?
        };
        let room = draft.probe_room(&layout)?;
        let code = probes::generate(
            &draft.program.image,
            draft.program.bias,
            &sites,
            &evicted,
            &layout,
            room.addr(),
            &counters,
            tid,
            timing,
            objects.as_ref().map_or(0, |(a, _)| a.trap_table()),
        )?;
        let area = draft.map_probe_area(room, &layout, &code.bytes)?;
        let object_calls = match objects {
            Some((objects, _)) => {
                let at = objects.routines_at();
                let (bytes, calls) =
                    probes::object_routines(&counters, tid, timing, objects.row_page, at)?;
                objects.write(at, &bytes);
                objects.init_traps(counters.addr(), calls.emit.unwrap_or(0));
                Some(calls)
            }
            None => None,
        };
        for (page, bytes) in probes::landing_pages(&code.landings) {
            let r = landings
                .iter_mut()
                .find(|r| r.addr() == page)
                .expect("every landing's page is reserved");
            fill_landing(r, &bytes, &draft.program.image.path)?;
        }
        let object = draft.program.image.path.display().to_string();
        let plan = draft.finish(&code.patches);
        // Shared objects may get int3 sites (--probe-mode int3): the handler
        // and its guard are there from the start.
        let object_traps = needs.int3;
        let filter = if traps > 0 || object_traps {
            crate::guard::filter(area.reservation.addr(), area.reservation.end())
        } else {
            Vec::new()
        };
        let object_columns = sites.len();
        let object_stats = own_timed;
        let probes = Probes {
            requests: resolution.requests,
            sites,
            counters,
            area,
            landings,
            table,
            filter,
            refused: Arc::default(),
            object,
            object_columns,
            object_stats,
            object_calls,
            object_traps,
        };
        Ok((plan, Some(probes)))
    }

    /// Whether any site traps (and so needs the trap handler and its guard).
    pub(super) fn traps(&self) -> bool {
        self.object_traps || self.sites.iter().any(|s| s.kind == Kind::Int3)
    }

    /// What the guard thread needs.
    pub(super) fn guard_target(&self) -> crate::guard::Target {
        crate::guard::Target {
            shared: Arc::clone(&self.counters),
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
        let mut next = 0usize;
        move |m, tid| {
            if next == counters.layout().rows {
                return None;
            }
            let pid = if m == 0 {
                first_pid as u64
            } else {
                tgid_of(tid).unwrap_or(u64::from(tid))
            };
            let row = next;
            next += 1;
            counters.set_row_pid(row, pid);
            Some((pid, counters.row_addr(row)))
        }
    }

    /// The rows given to processes, with their pids (rows are given in
    /// order, so the first free one ends them).
    pub(super) fn rows(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.counters.layout().rows)
            .map(|r| (r, self.counters.row_pid(r)))
            .take_while(|&(_, pid)| pid != 0)
    }

    /// All hits of each site: every process's row, plus the overflow counters.
    fn totals(&self) -> Vec<u64> {
        let mut t = self.column_hits();
        t.truncate(self.sites.len());
        t
    }

    /// All hits of each counter column (the program's sites, then the
    /// shared objects').
    pub(super) fn column_hits(&self) -> Vec<u64> {
        let mut totals: Vec<u64> = (0..self.counters.layout().sites)
            .map(|i| self.counters.overflow(i))
            .collect();
        for (r, _) in self.rows() {
            for (t, h) in totals.iter_mut().zip(self.counters.row_hits(r)) {
                *t += h;
            }
        }
        totals
    }

    /// Hits per process (pid), from the rows the trap handler fills.
    pub(super) fn per_process(&self) -> Vec<ProcessHits> {
        let labels: Vec<String> = self.sites.iter().map(Site::label).collect();
        self.rows()
            .map(|(r, pid)| {
                let hits = self
                    .counters
                    .row_hits(r)
                    .into_iter()
                    .take(self.sites.len())
                    .enumerate()
                    .filter(|&(i, c)| {
                        c > 0 && !matches!(self.sites[i].action, probes::Action::Exit { .. })
                    })
                    .map(|(i, c)| (labels[i].clone(), c))
                    .collect();
                ProcessHits {
                    pid: pid as i64,
                    hits,
                }
            })
            .collect()
    }

    /// Each site as its events name it (in site order), and whether any is
    /// traced.
    pub(super) fn info(&self) -> Vec<crate::events::ProbeInfo> {
        self.sites
            .iter()
            .map(|s| crate::events::ProbeInfo {
                label: s.label(),
                args: s
                    .place
                    .trace
                    .and_then(|r| self.requests[r].trace.clone())
                    .filter(|_| s.action.traced()),
                ret: s
                    .place
                    .ret
                    .filter(|_| s.timed.is_some())
                    .and_then(|r| self.requests[r].ret),
            })
            .collect()
    }

    /// The timed functions' calls: each entry's hits, and what the
    /// routines measured.
    pub(super) fn latency(&self) -> Vec<crate::report::Latency> {
        let totals = self.totals();
        let mut v: Vec<(u32, crate::report::Latency)> = self
            .sites
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let f = s.timed?;
                let snap = self.counters.stats(f as usize).snapshot();
                Some((f, crate::report::Latency::new(s.label(), totals[i], &snap)))
            })
            .collect();
        v.sort_by_key(|(f, _)| *f);
        v.into_iter().map(|(_, l)| l).collect()
    }

    pub(super) fn hits(&self) -> Vec<ProbeHits> {
        let totals = self.totals();
        self.sites
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s.action, probes::Action::Exit { .. }))
            .map(|(i, s)| ProbeHits {
                spec: self.requests[s.place.request].spec.clone(),
                symbol: s.place.symbol.clone(),
                offset: s.place.offset,
                address: format!("{:#x}", s.place.addr.0),
                hits: totals[i],
                kind: s.kind.name().into(),
                object: self.object.clone(),
            })
            .collect()
    }
}

/// Makes the returns of timed function `func` events of the site in
/// counter column `column` (its entry), their value shown as `ty`: the
/// latency exit routine writes them to the ring.
pub(super) fn trace_returns(counters: &Shared, func: u32, column: usize, ty: probes::ArgType) {
    let string = if ty == probes::ArgType::Str {
        uprobe_runtime::latency::EVENT_STR
    } else {
        0
    };
    let event = (column as u64 + 1) | string;
    counters
        .stats(func as usize)
        .event
        .store(event, std::sync::atomic::Ordering::Relaxed);
}

/// The timing stacks' table and what the latency routines need: the
/// statistics in `counters`, and the counter's rate, measured from the
/// (counter, clock) pair `since` (read when the start began: the steps
/// before this one are most or all of the millisecond)
/// over at least a millisecond (to a few parts in 100 000). Refused where
/// the CPU does not let user code read the thread pointer (`rdfsbase`),
/// which the routines find each thread's timing stack by.
fn timing(
    counters: &Shared,
    since: (u64, u64),
) -> Result<(
    Option<uprobe_runtime::latency::Table>,
    Option<probes::Timing>,
)> {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    const SPAN_NS: u64 = 1_000_000;
    if rustix::param::linux_hwcap().1 as u64 & HWCAP2_FSGSBASE == 0 {
        return Err(Error::Untimeable {
            site: "any function".into(),
            why: "the routines find each thread's timing stack with `rdfsbase`, which this CPU or kernel does not allow (FSGSBASE)".into(),
        });
    }
    let table = uprobe_runtime::latency::Table::map()
        .map_err(|e| Error::sys("mapping the timing stacks", e))?;
    let a = since;
    let mut b = crate::sys::clock::pair();
    if b.1.saturating_sub(a.1) < SPAN_NS {
        std::thread::sleep(std::time::Duration::from_nanos(SPAN_NS - (b.1 - a.1)));
        b = crate::sys::clock::pair();
    }
    let ns_per_tick = b.1.saturating_sub(a.1) as f64 / b.0.saturating_sub(a.0).max(1) as f64;
    let t = probes::Timing {
        table: table.addr(),
        stats: counters.stats_addr(0),
        mult: (ns_per_tick * (1u64 << 32) as f64) as u64,
    };
    Ok((Some(table), Some(t)))
}

/// The process a thread belongs to.
fn tgid_of(tid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reserves the page of each punned jump's landing (runtime address: its
/// link-time one, biased). A site whose page is taken (by one of our own
/// mappings, which the program would not have) falls back as a site
/// without a jump does under `mode`: skipped for a pattern's match, an
/// error otherwise.
fn reserve_landings(
    sites: Vec<Site>,
    draft: &Draft,
    resolution: &Resolution,
    mode: ProbeMode,
    skipped: &mut Vec<(String, String)>,
) -> Result<(Vec<Site>, Vec<Reservation>)> {
    const PAGE: u64 = 4096;
    let mut pages: Vec<Reservation> = Vec::new();
    let mut kept = Vec::with_capacity(sites.len());
    for s in sites {
        let Kind::JumpPun { landing, .. } = s.kind else {
            kept.push(s);
            continue;
        };
        let page = draft.program.bias.apply(landing).0 & !(PAGE - 1);
        if pages.iter().any(|r| r.addr() == page) {
            kept.push(s);
            continue;
        }
        match Reservation::fixed(page, PAGE) {
            Ok(r) => {
                pages.push(r);
                kept.push(s);
            }
            Err(e) => {
                let why = format!("its punned jump lands at {page:#x}, which is taken ({e})");
                let glob = resolution.requests[s.place.request].location.is_glob();
                match mode {
                    ProbeMode::Auto if glob => skipped.push((s.label(), why)),
                    ProbeMode::Auto => {
                        return Err(Error::UnsafeSite {
                            site: s.label(),
                            why,
                        })
                    }
                    _ => {
                        return Err(Error::Probe(probes::ProbeError::NoJump {
                            site: s.label(),
                            why,
                        }))
                    }
                }
            }
        }
    }
    Ok((kept, pages))
}

/// Fills a landing page with `bytes` and makes it read+exec, named for
/// the program at `path` in `/proc/PID/maps`.
fn fill_landing(r: &mut Reservation, bytes: &[u8], path: &std::path::Path) -> Result<()> {
    use rustix::mm::MprotectFlags;
    let fail = |what: &str, e: std::io::Error| Error::sys(what, e);
    r.fill(bytes)
        .map_err(|e| fail("filling a punned jump's landing", e))?;
    r.protect(0, r.len(), MprotectFlags::READ | MprotectFlags::EXEC)
        .map_err(|e| fail("protecting a punned jump's landing", e))?;
    r.name(&crate::vma::anon_name("puns", path));
    Ok(())
}

/// Whether the program whose symbols are `syms` runs glibc's threads: it
/// is dynamically linked to `libc.so.6`, or static with glibc's
/// `_thread_db_pthread_tid` descriptor.
fn glibc_threads(syms: &crate::symbols::Symbols) -> bool {
    syms.needed.iter().any(|l| l == "libc.so.6") || !syms.named("_thread_db_pthread_tid").is_empty()
}

/// How the event routine learns a thread's id in a program whose threads
/// are glibc's or not: from glibc's thread block where they are and the
/// CPU lets user code read the thread pointer (`rdfsbase`,
/// `HWCAP2_FSGSBASE`); otherwise with a `gettid` per hit.
fn tid_of(glibc: bool) -> Tid {
    /// `struct pthread::tid` in glibc on x86-64 (glibc 2.36's
    /// `_thread_db_pthread_tid` says 0x2d0; stable across 2.x).
    const GLIBC_TID: i32 = 0x2d0;
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    let hwcap2 = rustix::param::linux_hwcap().1 as u64;
    if glibc && hwcap2 & HWCAP2_FSGSBASE != 0 {
        Tid::Glibc(GLIBC_TID)
    } else {
        Tid::Syscall
    }
}

/// What [`resolve_program`] keeps: the places, the warnings, whether the
/// program's threads are glibc's, and the sites chosen (sites, skipped,
/// evicted, unseen).
type KeptProgram = (
    Vec<probes::Place>,
    Vec<String>,
    bool,
    Vec<Site>,
    Vec<(String, String)>,
    Vec<probes::Evicted>,
    Vec<(String, String)>,
);

/// Whether a kept entry of sites fits the file (`program`: the program, or
/// a shared object) and the requests it is read for: every place, site and
/// evicted neighbour in an executable segment's file bytes, every request
/// number in range (an entry that does not, written by anything but us, is a
/// miss rather than patches at foreign addresses or a panic).
pub(super) fn kept_fits<'a>(
    program: &crate::elf::Image,
    requests: usize,
    places: &[probes::Place],
    sites: impl ExactSizeIterator<Item = &'a Site>,
    evicted: &[probes::Evicted],
) -> bool {
    let in_text = |a: u64| {
        program
            .segments
            .iter()
            .any(|s| s.exec && a >= s.vaddr.0 && a < s.vaddr.0 + s.filesz)
    };
    let place_fits = |p: &probes::Place| {
        in_text(p.addr.0)
            && p.function
                .is_none_or(|(f, size)| in_text(f.0) && p.addr.0 >= f.0 && p.addr.0 - f.0 <= size)
            && [Some(p.request), p.trace, p.latency, p.ret]
                .into_iter()
                .flatten()
                .all(|r| r < requests)
    };
    places.iter().all(place_fits)
        && {
            let n = sites.len();
            let mut sites = sites;
            sites.all(|s| place_fits(&s.place) && s.timed.is_none_or(|t| (t as usize) < n))
        }
        && evicted
            .iter()
            .all(|e| in_text(e.addr.0) && in_text(e.addr.0 + e.len.max(1) as u64 - 1))
}

/// The program's probes resolved (`requests` against its symbols) and each
/// site's tactic chosen (the analysis), with the thread id's source. Kept in
/// the user's cache (`program-sites/`) under what they depend on: the
/// file's identity (device, inode, size, modification and change times),
/// the requests, the mode and `unsafe_addrs`; a later run of the same file
/// with the same probes reads them instead of the symbols and the analysis
/// (about 3 ms for python). Only a resolution that succeeded is kept, so a
/// bad request is refused each time.
pub(super) fn resolve_program(
    program: &crate::elf::Image,
    requests: Vec<Request>,
    mode: ProbeMode,
    unsafe_addrs: bool,
) -> Result<(Resolution, Tid, probes::Chosen)> {
    const KIND: &str = "program-sites";
    if requests.is_empty() {
        // Probes in shared objects only: the thread id's source is all
        // they need of the program, and nothing is kept.
        let glibc = glibc_threads(&crate::symbols::Symbols::read(program));
        return Ok((
            Resolution::default(),
            tid_of(glibc),
            probes::Chosen::default(),
        ));
    }
    let key = program.file.metadata().ok().map(|m| {
        format!(
            "program-sites 1\n{:?}\n{mode:?} {unsafe_addrs}\n{requests:?}\n--\n",
            crate::cache::identity(&m),
        )
    });
    let kept = key
        .as_ref()
        .and_then(|k| crate::cache::read_keyed(KIND, k.as_bytes()))
        .and_then(|bytes| serde_json::from_slice::<KeptProgram>(&bytes).ok());
    let kept = kept.filter(|(places, _, _, sites, _, evicted, _)| {
        kept_fits(program, requests.len(), places, sites.iter(), evicted)
    });
    if let Some((places, warnings, glibc, sites, skipped, evicted, unseen)) = kept {
        let resolution = Resolution {
            requests,
            places,
            warnings,
        };
        let chosen = probes::Chosen {
            sites,
            skipped,
            evicted,
            unseen,
        };
        return Ok((resolution, tid_of(glibc), chosen));
    }
    let syms = crate::symbols::Symbols::read(program);
    let glibc = glibc_threads(&syms);
    let mut resolver = probes::Resolver::new(program, &syms, unsafe_addrs);
    for request in requests {
        resolver.add(request)?;
    }
    let resolution = resolver.finish();
    let chosen = probes::choose(program, &resolution, mode)?;
    if let Some(k) = key {
        let keep = (
            &resolution.places,
            &resolution.warnings,
            glibc,
            &chosen.sites,
            &chosen.skipped,
            &chosen.evicted,
            &chosen.unseen,
        );
        if let Ok(bytes) = serde_json::to_vec(&keep) {
            crate::cache::write_keyed(KIND, k.as_bytes(), &bytes);
        }
    }
    Ok((resolution, tid_of(glibc), chosen))
}
