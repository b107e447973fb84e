//! The shared objects' side of a session: which `OBJECT:SPEC` probes go in
//! which object, and, while the program runs, the answer to each ring of
//! the mapping detour (see `probes::detour`): the object's text becomes an
//! object the fault server serves in that process, with its probes'
//! trampolines written to the objects' probe area first.
//!
//! ```text
//!  spawn: OBJECT:SPEC ─▶ objects mapped at start (ld.so --list) ─▶ sites per file (checked now)
//!                     └▶ no such object yet: pending
//!  ring (process, slot) ─▶ request: fd, address, length, offset
//!        ─▶ /proc/TID/fd/FD: which file ─▶ its sites (pending ones resolved now)
//!        ─▶ trampolines ─▶ page images ─▶ register, map ─▶ answer "served"
//! ```
//!
//! A file's sites get their counter columns once, so the calls of every
//! mapping of it (every process, every `dlopen` of it) add up in one probe.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uprobe_runtime::area::Shared;
use uprobe_runtime::{Bell, ObjectId, Server, TextRange, PAGE_SIZE};

use crate::addr::{page_up, Bias};
use crate::elf::Image;
use crate::error::{Error, Result};
use crate::plan::ObjectsArea;
use crate::probes::detour::{LEFT, MAX_RUNS, RUNS, SERVED, STEP_ASK, STEP_MAPPED};
use crate::probes::{self, Kind, Linked, ObjectSite, ProbeMode, Request, Resolution};
use crate::report::{ObjectStats, ProbeHits};
use crate::symbols::Symbols;

/// A file's identity: device and inode.
type FileId = (u64, u64);

/// One file's probes.
struct FileProbes {
    /// How the report names it: its path.
    path: String,
    /// The parsed file.
    image: Image,
    /// Its sites and their counter columns.
    sites: Vec<ObjectSite>,
    /// Neighbours moved out of the way of short jumps' pads.
    evicted: Vec<probes::Evicted>,
}

/// Pages of a mapping that we serve (those that hold its probes' sites):
/// address, length, and the object that serves them.
type Run = (u64, u64, ObjectId);

/// A first ring answered with runs, until the second.
struct Asked {
    /// The mapping: address, length and file offset, as asked.
    mapping: (u64, u64, u64),
    path: PathBuf,
    runs: Vec<Run>,
}

/// The doorbell page that answers request number `seq` with `status`
/// (the runs of an answer are in the slot's runs page: see
/// `ObjectsArea::set_runs`).
fn answer_page(status: u64, seq: u32) -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    page[..8].copy_from_slice(&status.to_le_bytes());
    let at = crate::probes::detour::ANSWER_SEQ as usize;
    page[at..at + 4].copy_from_slice(&seq.to_le_bytes());
    page
}

/// The runs of pages of `[lo, hi)` that `patches` write to, in address
/// order, at most [`MAX_RUNS`] (the closest ones joined: a page between
/// two runs served by us needs no probe to be served right).
fn runs_of(patches: &[(u64, Vec<u8>)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut pages: Vec<(u64, u64)> = patches
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(at, b)| {
            let start = (at & !(PAGE_SIZE - 1)).max(lo);
            let end = page_up(at + b.len() as u64).min(hi);
            (start, end)
        })
        .filter(|(a, b)| a < b)
        .collect();
    pages.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (a, b) in pages {
        match runs.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => runs.push((a, b)),
        }
    }
    while runs.len() > MAX_RUNS {
        let i = (1..runs.len())
            .min_by_key(|&i| runs[i].0 - runs[i - 1].1)
            .expect("more than one run");
        runs[i - 1].1 = runs[i].1;
        runs.remove(i);
    }
    runs.into_iter().map(|(a, b)| (a, b - a)).collect()
}

/// What [`SharedObjects::place`] gives.
struct Placed {
    counters: Arc<Shared>,
    table: crate::events::ProbeTable,
    calls: probes::ObjectCalls,
}

/// The probes of the program's shared objects, before and while it runs.
pub(super) struct SharedObjects {
    /// The `OBJECT:SPEC` requests.
    requests: Vec<Request>,
    mode: ProbeMode,
    unsafe_addrs: bool,
    /// Every object's whole text is served, probed or not
    /// (`--serve-objects all`), not only the pages of its sites.
    all: bool,
    /// The objects mapped at start, with their files' identities.
    linked: Vec<(Linked, Option<FileId>)>,
    /// Sites by file.
    files: HashMap<FileId, FileProbes>,
    /// Counter columns `[next, end)` still free.
    next: usize,
    end: usize,
    /// Statistics slots (timed functions) `[next_stats, end_stats)` still free.
    next_stats: usize,
    end_stats: usize,
    /// Once placed: the counters, the probes' table and the routines.
    placed: Option<Placed>,
    /// What an earlier ring built: (file, offset, address, length) → the
    /// runs of pages served, each its own object.
    built: HashMap<(FileId, u64, u64, u64), Vec<Run>>,
    /// The runs named in answer to a first ring, until its second: by
    /// (process, doorbell page).
    asked: HashMap<(usize, u64), Asked>,
    /// Every object built, and its file's path.
    objects: Vec<(ObjectId, String)>,
    /// Whether each request matched an object the program mapped.
    seen: Vec<bool>,
    /// What went wrong or was passed over, for the warnings at exit.
    warnings: Vec<String>,
    /// The request number last answered, and the answer, by (process,
    /// doorbell page).
    answered: HashMap<(usize, u64), (u32, u64)>,
    /// Files already looked at (`learn`), probed or not.
    learned: HashSet<FileId>,
    /// Addresses of the int3 sites in the objects' trap table (shared by
    /// every process): another object at one of them gets no int3 there.
    int3_at: HashSet<u64>,
}

/// What the shared objects' probes need of the session's shared memory and
/// probe code, known before the program starts: counter columns, an event
/// ring (with room for strings), statistics slots for timed functions.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ObjectNeeds {
    pub(super) columns: usize,
    pub(super) traced: bool,
    pub(super) strings: bool,
    pub(super) timed: usize,
    /// Sites may be int3s (`--probe-mode int3`).
    pub(super) int3: bool,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl SharedObjects {
    /// The objects' probes for `requests` (each naming an object) of a
    /// program whose objects at start are `linked`: each object mapped at
    /// start that a request names has its sites resolved and chosen now
    /// (an unknown function is an error before the program starts); the
    /// others wait for an object to be mapped.
    pub(super) fn new(
        requests: Vec<Request>,
        linked: Vec<Linked>,
        mode: ProbeMode,
        unsafe_addrs: bool,
        all: bool,
    ) -> Result<(SharedObjects, ObjectNeeds)> {
        let linked: Vec<(Linked, Option<FileId>)> = linked
            .into_iter()
            .map(|l| {
                let id = file_id(&l.path);
                (l, id)
            })
            .collect();
        let mut s = SharedObjects {
            seen: vec![false; requests.len()],
            requests,
            mode,
            unsafe_addrs,
            all,
            linked: Vec::new(),
            files: HashMap::new(),
            next: 0,
            end: 0,
            next_stats: 0,
            end_stats: 0,
            placed: None,
            built: HashMap::new(),
            asked: HashMap::new(),
            objects: Vec::new(),
            warnings: Vec::new(),
            answered: HashMap::new(),
            learned: HashSet::new(),
            int3_at: HashSet::new(),
        };
        let mut needs = ObjectNeeds {
            int3: mode == ProbeMode::Int3,
            ..ObjectNeeds::default()
        };
        for r in &s.requests {
            needs.traced |= r.trace.is_some() || r.ret.is_some();
            needs.strings |= r.trace.iter().flatten().any(|t| *t == probes::ArgType::Str)
                || r.ret == Some(probes::ArgType::Str);
        }
        let timing = s.requests.iter().any(|r| r.latency || r.ret.is_some());
        // A glob, or a name no object at start has, may match one later.
        let pending = s.requests.iter().any(|r| {
            let object = r.object.as_ref().expect("only OBJECT:SPEC requests");
            matches!(object, probes::ObjectPattern::Glob(_))
                || !linked.iter().any(|(l, _)| object.matches(l))
        });
        // The objects mapped at start: their sites now.
        let mut files: Vec<(FileId, FileProbes)> = Vec::new();
        for (l, id) in &linked {
            let Some(id) = *id else { continue };
            if files.iter().any(|(f, _)| *f == id) {
                continue;
            }
            let mine: Vec<usize> = (0..s.requests.len())
                .filter(|&i| s.requests[i].object.as_ref().is_some_and(|o| o.matches(l)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (fp, skipped) = s.resolve(&l.path, &mine, true)?;
            needs.columns += fp.sites.len();
            needs.timed += funcs(&fp.sites);
            s.note_skipped(&l.path, skipped);
            files.push((id, fp));
        }
        // Room for objects mapped later (dlopen), or again elsewhere.
        if pending {
            needs.columns += PENDING_COLUMNS;
            if timing {
                needs.timed += PENDING_TIMED;
            }
        }
        s.linked = linked;
        s.files = files.into_iter().collect();
        s.end = needs.columns;
        s.end_stats = needs.timed;
        Ok((s, needs))
    }

    /// The objects' counter columns start at `first` (after the program's
    /// sites) and their statistics slots at `first_stats`, in `counters`;
    /// `table` gets each site's description and `calls` are what their
    /// trampolines call and read. Numbers the sites resolved so far.
    pub(super) fn place(
        &mut self,
        first: usize,
        first_stats: usize,
        counters: Arc<Shared>,
        table: crate::events::ProbeTable,
        calls: probes::ObjectCalls,
    ) {
        self.next = first;
        self.end += first;
        self.next_stats = first_stats;
        self.end_stats += first_stats;
        self.placed = Some(Placed {
            counters,
            table,
            calls,
        });
        let mut ids: Vec<FileId> = self.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let mut fp = self.files.remove(&id).expect("listed");
            self.number(&mut fp);
            self.files.insert(id, fp);
        }
    }

    /// Gives `fp`'s sites their counter columns and statistics slots (as
    /// many as are left), their descriptions in the probes' table, and each
    /// traced return its event.
    fn number(&mut self, fp: &mut FileProbes) {
        let Some(placed) = &self.placed else { return };
        let free = self.end - self.next;
        if fp.sites.len() > free {
            self.warnings.push(format!(
                "{} of the matched sites of {} not probed: no counters left for them",
                fp.sites.len() - free,
                short(Path::new(&fp.path))
            ));
            fp.sites.truncate(free);
        }
        let n = funcs(&fp.sites);
        let timed = if self.next_stats + n <= self.end_stats {
            Some(self.next_stats)
        } else {
            if n > 0 {
                self.warnings.push(format!(
                    "{n} function(s) of {} not timed: no room left for their statistics",
                    short(Path::new(&fp.path))
                ));
            }
            None
        };
        // Untimed: the entries count, the exits go.
        if timed.is_none() {
            fp.sites
                .retain(|(s, _)| !matches!(s.action, probes::Action::Exit { .. }));
        }
        let object = short(Path::new(&fp.path));
        for (s, c) in &mut fp.sites {
            *c = self.next;
            self.next += 1;
            s.timed = s.timed.and_then(|f| timed.map(|t| t as u32 + f));
            if let probes::Action::Exit { func } = &mut s.action {
                *func += timed.unwrap_or(0) as u32;
            }
            let ret = s
                .place
                .ret
                .filter(|_| s.timed.is_some())
                .and_then(|r| self.requests[r].ret);
            if let (Some(f), Some(t)) = (s.timed, ret) {
                super::probes::trace_returns(&placed.counters, f, *c, t);
            }
            placed.table.set(
                crate::events::ProbeId(*c),
                crate::events::ProbeInfo {
                    label: format!("{object}:{}", s.label()),
                    args: s
                        .place
                        .trace
                        .and_then(|r| self.requests[r].trace.clone())
                        .filter(|_| s.action.traced()),
                    ret,
                },
            );
        }
        if timed.is_some() {
            self.next_stats += n;
        }
    }

    /// Resolves requests `mine` in the object at `path` and chooses each
    /// site's kind; with `strict`, a site named on its own that cannot be
    /// probed is an error (before the program starts), else passed over.
    fn resolve(
        &self,
        path: &Path,
        mine: &[usize],
        strict: bool,
    ) -> Result<(FileProbes, Vec<(String, String)>)> {
        let image = Image::open_object(path)?;
        let canonical = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
            .to_string();
        // What the resolution depends on: the file's contents (its
        // identity), the requests and their numbers, the mode.
        let key = image.file.metadata().ok().map(|m| {
            let asked: Vec<(usize, &Request)> =
                mine.iter().map(|&i| (i, &self.requests[i])).collect();
            format!(
                "sites 1\n{:?}\n{:?} {} {strict}\n{asked:?}\n--\n",
                crate::cache::identity(&m),
                self.mode,
                self.unsafe_addrs
            )
        });
        let kept = key
            .as_ref()
            .and_then(|k| crate::cache::read_keyed(SITES_KIND, k.as_bytes()))
            .and_then(|bytes| serde_json::from_slice::<KeptSites>(&bytes).ok())
            .filter(|(sites, evicted, _)| {
                let sites = sites.iter().map(|(s, _)| s);
                super::probes::kept_fits(&image, self.requests.len(), &[], sites, evicted)
            });
        if let Some((sites, evicted, skipped)) = kept {
            let fp = FileProbes {
                path: canonical,
                image,
                sites,
                evicted,
            };
            return Ok((fp, skipped));
        }
        let (fp, skipped) = self.resolve_afresh(image, canonical, path, mine, strict)?;
        if let Some(k) = key {
            if let Ok(bytes) = serde_json::to_vec(&(&fp.sites, &fp.evicted, &skipped)) {
                crate::cache::write_keyed(SITES_KIND, k.as_bytes(), &bytes);
            }
        }
        Ok((fp, skipped))
    }

    /// [`resolve`](Self::resolve) without the cache: the symbols of the
    /// file (`image`), the requests resolved, the sites chosen.
    fn resolve_afresh(
        &self,
        image: Image,
        canonical: String,
        path: &Path,
        mine: &[usize],
        strict: bool,
    ) -> Result<(FileProbes, Vec<(String, String)>)> {
        let syms = Symbols::read(&image);
        // One resolution: the resolver's result, the requests it took
        // (ours, by its numbering) and what it could not take.
        type Resolved = (
            Resolution,
            probes::Chosen,
            Vec<usize>,
            Vec<(String, String)>,
        );
        let resolve = |timed: bool| -> Result<Resolved> {
            let mut resolver = probes::Resolver::new(&image, &syms, self.unsafe_addrs);
            let (mut added, mut failed) = (Vec::new(), Vec::new());
            for &i in mine {
                let mut r = self.requests[i].clone();
                r.object = None;
                if !timed {
                    r.latency = false;
                    r.ret = None;
                }
                // Once the program runs, a request that does not resolve
                // here (a function this object lacks) leaves the others.
                match resolver.add(r) {
                    Ok(()) => added.push(i),
                    Err(e) if !strict => {
                        failed.push((String::new(), format!("{}: {e}", short(path))))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let resolution = resolver.finish();
            let chosen = probes::choose(&image, &resolution, self.mode)?;
            Ok((resolution, chosen, added, failed))
        };
        // Once the program runs, a function that cannot be timed is still
        // counted (and traced), with a warning; before, it is an error.
        let (resolution, chosen, added, mut skipped) = match resolve(true) {
            Err(e) if !strict => {
                let (r, c, added, mut failed) = resolve(false)?;
                // Said as a warning, after what was passed over.
                failed.push((
                    String::new(),
                    format!("{}: its functions are counted, not timed: {e}", short(path)),
                ));
                (r, c, added, failed)
            }
            other => other?,
        };
        skipped.splice(0..0, chosen.skipped);
        let mut sites = Vec::new();
        for s in chosen.sites {
            if matches!(
                s.kind,
                Kind::Jump { .. } | Kind::JumpPadding { .. } | Kind::JumpShort { .. } | Kind::Int3
            ) {
                sites.push((s, 0));
                continue;
            }
            let why = "its jump would be a punned one, which shared objects do not place yet \
                       (--probe-mode int3 places an int3)"
                .to_string();
            let glob = resolution.requests[s.place.request].location.is_glob();
            if strict && !glob {
                return Err(Error::UnsafeSite {
                    site: format!("{}:{}", short(path), s.label()),
                    why,
                });
            }
            skipped.push((s.label(), why));
        }
        // Timed functions numbered without the holes left by sites passed
        // over; an exit whose entry went goes too.
        let mut renumber = HashMap::new();
        for (s, _) in &sites {
            if let Some(f) = s.timed {
                let n = renumber.len() as u32;
                renumber.entry(f).or_insert(n);
            }
        }
        sites.retain(|(s, _)| match s.action {
            probes::Action::Exit { func } => renumber.contains_key(&func),
            _ => true,
        });
        for (s, _) in &mut sites {
            s.timed = s.timed.and_then(|f| renumber.get(&f).copied());
            if let probes::Action::Exit { func } = &mut s.action {
                *func = renumber[func];
            }
        }
        // The report repeats each site's spec as the user wrote it: the
        // request numbers are ours, not the resolver's.
        let ours = |r: usize| added[r];
        for (s, _) in &mut sites {
            s.place.request = ours(s.place.request);
            s.place.trace = s.place.trace.map(ours);
            s.place.latency = s.place.latency.map(ours);
            s.place.ret = s.place.ret.map(ours);
        }
        Ok((
            FileProbes {
                path: canonical,
                image,
                sites,
                evicted: chosen.evicted,
            },
            skipped,
        ))
    }

    fn note_skipped(&mut self, path: &Path, mut skipped: Vec<(String, String)>) {
        // An entry without a site is a warning of its own.
        skipped.retain(|(site, why)| {
            if site.is_empty() {
                self.warnings.push(why.clone());
            }
            !site.is_empty()
        });
        if skipped.is_empty() {
            return;
        }
        let shown: Vec<String> = skipped
            .iter()
            .take(5)
            .map(|(site, why)| format!("{site} ({why})"))
            .collect();
        self.warnings.push(format!(
            "{} of the matched functions of {} not probed: {}{}",
            skipped.len(),
            short(path),
            shown.join(", "),
            if skipped.len() > 5 { ", …" } else { "" }
        ));
    }

    /// Answers a ring of the mapping detour: serves the object just mapped
    /// (status [`SERVED`]), or says it could not (the detour maps the file
    /// back as it was asked for).
    pub(super) fn ring(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        bell: &Bell,
    ) -> std::result::Result<(), uprobe_runtime::ServeError> {
        // Slots held by threads killed while they waited.
        area.free_dead_slots(|tid| std::path::Path::new(&format!("/proc/{tid}")).exists());
        let Some(req) = area.request(bell.addr) else {
            return Ok(());
        };
        let (tid, seq) = (req.tid, req.seq);
        // Every answer says which request it is for (the slot's number),
        // and the detour takes only the one for its own: a repeat of a ring
        // answered already (its thread's wait cut short by a signal), or a
        // touch with no request behind it (mlockall, a debugger), gets the
        // last answer again and nothing is done twice.
        let key = (bell.mm.0, bell.addr & !(PAGE_SIZE - 1));
        let status = match self.answered.get(&key) {
            Some(&(s, status)) if s == seq => status,
            _ if tid == 0 => LEFT,
            _ => {
                let status = match req.step {
                    STEP_ASK => self.ask(server, area, bell, key, &req),
                    STEP_MAPPED => self.mapped(server, bell, key, &req),
                    _ => LEFT,
                };
                self.answered.insert(key, (seq, status));
                status
            }
        };
        server.answer_bell(bell, &answer_page(status, seq))
    }

    /// The answer to a first ring: "runs", with the runs of pages we serve
    /// of the mapping asked written to the slot's runs page, or "left" (the
    /// file's, as the kernel made it).
    fn ask(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        bell: &Bell,
        key: (usize, u64),
        req: &crate::plan::MapRequest,
    ) -> u64 {
        self.asked.remove(&key);
        area.set_runs(bell.addr, &[]);
        match self.runs_for(server, area, bell, req) {
            Ok(Some((path, runs))) if !runs.is_empty() => {
                let spans: Vec<(u64, u64)> = runs.iter().map(|&(a, l, _)| (a, l)).collect();
                area.set_runs(bell.addr, &spans);
                self.asked.insert(
                    key,
                    Asked {
                        mapping: (req.addr, req.len, req.offset),
                        path,
                        runs,
                    },
                );
                RUNS
            }
            Ok(_) => LEFT,
            Err(why) => {
                self.warnings.push(format!(
                    "an object mapped at {:#x} was left to the kernel, unprobed: {why}",
                    req.addr
                ));
                LEFT
            }
        }
    }

    /// The answer to a second ring: the runs named in answer to the first
    /// are anonymous memory now, registered and served here ("served"), or
    /// go back to the file ("left": the detour maps it over the runs the
    /// slot's runs page still names).
    fn mapped(
        &mut self,
        server: &mut Server,
        bell: &Bell,
        key: (usize, u64),
        req: &crate::plan::MapRequest,
    ) -> u64 {
        let Some(asked) = self.asked.remove(&key) else {
            return LEFT;
        };
        let (addr, len, _) = asked.mapping;
        let served = (|| {
            if asked.mapping != (req.addr, req.len, req.offset) {
                return Err("its second ring named another mapping".to_string());
            }
            server.unmap_range(bell.mm, addr, addr + page_up(len));
            for &(at, n, object) in &asked.runs {
                server
                    .register(bell.mm, at, n)
                    .map_err(|e| format!("registering {at:#x}: {e}"))?;
                server
                    .map_object(bell.mm, object, 0)
                    .map_err(|e| format!("serving {at:#x}: {e}"))?;
            }
            Ok(())
        })();
        match served {
            Ok(()) => {
                for &(_, _, object) in &asked.runs {
                    self.note_served(object, &asked.path);
                }
                SERVED
            }
            Err(why) => {
                self.warnings.push(format!(
                    "{} mapped at {addr:#x} was left to the kernel, unprobed: {why}",
                    asked.path.display()
                ));
                LEFT
            }
        }
    }

    /// The file of a first ring's mapping and the runs of its pages we
    /// serve, built now (trampolines written, page images made) unless an
    /// earlier ring built them; `None` for a file no probe names.
    fn runs_for(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        bell: &Bell,
        req: &crate::plan::MapRequest,
    ) -> std::result::Result<Option<(PathBuf, Vec<Run>)>, String> {
        let (tid, fd) = (req.tid, req.fd);
        let (addr, len, offset) = (req.addr, req.len, req.offset);
        if bell.tid != 0 && tid != bell.tid {
            return Err(format!(
                "a mapping request from thread {} rang as thread {tid}",
                bell.tid
            ));
        }
        let proc_fd = format!("/proc/{tid}/fd/{fd}");
        let unseen = |e: std::io::Error| {
            format!(
                "cannot open {proc_fd}, the file thread {tid} mapped ({e}; is the program in \
                 another PID namespace?)"
            )
        };
        let path = std::fs::read_link(&proc_fd).map_err(unseen)?;
        let file = std::fs::File::open(&proc_fd).map_err(unseen)?;
        let meta = file.metadata().map_err(|e| format!("{proc_fd}: {e}"))?;
        let id: FileId = (meta.dev(), meta.ino());
        // The thread id is the one the thread sees: in another PID namespace
        // (a program that unshared one) it names another process here.
        // The file must be the one the process itself mapped.
        if (req.dev, req.ino) != id {
            return Err(format!(
                "{proc_fd} is not the file thread {tid} mapped (is the program in another PID \
                 namespace?)"
            ));
        }
        let key = (id, offset, addr, len);
        self.learn(id, &path);
        if !self.files.contains_key(&id) && !self.all {
            return Ok(None);
        }
        if let Some(runs) = self.built.get(&key) {
            return Ok(Some((path, runs.clone())));
        }
        let bytes = map_file(&file, &path)?;
        let patches = self.code_for(area, id, (addr, len, offset));
        let end = addr + page_up(len);
        let ranges = if self.all {
            vec![(addr, end - addr)]
        } else {
            runs_of(&patches, addr, end)
        };
        let mut runs = Vec::new();
        for (at, n) in ranges {
            let object = object_for(server, &bytes, (at, n, offset + (at - addr)), &patches);
            runs.push((at, n, object));
        }
        self.built.insert(key, runs.clone());
        Ok(Some((path, runs)))
    }

    /// The patches of the probes of file `id` in its mapping of `len` bytes
    /// from `offset` at `addr`: their trampolines (and traps) are written to
    /// `area` now.
    fn code_for(
        &mut self,
        area: &mut ObjectsArea,
        id: FileId,
        (addr, len, offset): (u64, u64, u64),
    ) -> Vec<(u64, Vec<u8>)> {
        let (Some(fp), Some(placed)) = (self.files.get(&id), &self.placed) else {
            return Vec::new();
        };
        // Where the segment that holds `offset` puts link addresses.
        let Some(bias) = fp
            .image
            .segments
            .iter()
            .find(|s| s.offset <= offset && offset < s.offset + s.filesz.max(1))
            .map(|s| {
                Bias(
                    addr.wrapping_add(s.offset)
                        .wrapping_sub(s.vaddr.0)
                        .wrapping_sub(offset),
                )
            })
        else {
            return Vec::new();
        };
        let inside: Vec<ObjectSite> = fp
            .sites
            .iter()
            .filter(|(s, _)| {
                let ip = s.place.runtime(bias);
                ip >= addr && ip + s.kind.patch_len() as u64 <= addr + len
            })
            .cloned()
            .collect();
        let bounds = area.bounds();
        let traps_left = area.traps_left();
        let int3_at = &self.int3_at;
        let evicted: Vec<probes::Evicted> = fp
            .evicted
            .iter()
            .filter(|e| {
                let ip = bias.apply(e.addr).0;
                ip >= addr && ip + e.len as u64 <= addr + len
            })
            .cloned()
            .collect();
        let code = probes::object_code(
            &fp.image,
            bias,
            &inside,
            &evicted,
            &placed.counters,
            &placed.calls,
            |ip| crate::plan::within_reach(bounds, ip),
            || area.take(uprobe_runtime::area::SLOT_BYTES as u64),
            traps_left,
            |ip| !int3_at.contains(&ip),
        );
        for (at, c) in &code.trampolines {
            area.write(*at, c);
        }
        // After their slots: a trap finds its entry only once the slot it
        // resumes in is there.
        for t in &code.traps {
            area.add_trap(t);
            self.int3_at.insert(t.site);
        }
        let p = PathBuf::from(&fp.path);
        self.note_skipped(&p, code.skipped);
        code.patches
    }

    /// Counts `object` (of the file at `path`) among the objects served,
    /// once it is mapped in some process, once.
    fn note_served(&mut self, object: ObjectId, path: &Path) {
        if self.objects.iter().any(|(o, _)| *o == object) {
            return;
        }
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        self.objects.push((object, canonical.display().to_string()));
    }

    /// Serves the interpreter's text in the first process: the stage
    /// mapped it at `interp`'s addresses (`ranges`) and registered it; its
    /// probes' jumps and `detour` (the mapping detour's jump) are patched
    /// in. All of it is ours (the stage mapped it), not only its probes'
    /// pages.
    pub(super) fn serve_interp(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        interp: &crate::plan::Placed,
        ranges: &[TextRange],
        detour: (u64, Vec<u8>),
    ) -> std::result::Result<(), String> {
        let path = &interp.image.path;
        let meta = interp
            .image
            .file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let id: FileId = (meta.dev(), meta.ino());
        self.learn(id, path);
        let bytes = map_file(&interp.image.file, path)?;
        for r in ranges {
            let seg = interp
                .image
                .segments
                .iter()
                .find(|s| s.exec && (interp.bias.0 + s.vaddr.0) & !(PAGE_SIZE - 1) == r.start)
                .ok_or_else(|| format!("{}: no segment at {:#x}", path.display(), r.start))?;
            let offset = seg.offset & !(PAGE_SIZE - 1);
            let len = r.pages as u64 * PAGE_SIZE;
            let mut patches = self.code_for(area, id, (r.start, len, offset));
            patches.push(detour.clone());
            let object = object_for(server, &bytes, (r.start, len, offset), &patches);
            server
                .map_object(uprobe_runtime::MmId::FIRST, object, 0)
                .map_err(|e| format!("serving {}: {e}", path.display()))?;
            self.note_served(object, path);
            // The loader's text runs first and nearly whole: installed now,
            // before the program starts, rather than fault by fault.
            server
                .populate_object(uprobe_runtime::MmId::FIRST, object)
                .map_err(|e| format!("installing {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Resolves the requests for a file mapped for the first time, unless
    /// done: every request that names it, found among the objects mapped
    /// at start by identity, or else by its file name.
    fn learn(&mut self, id: FileId, path: &Path) {
        if !self.learned.insert(id) {
            return;
        }
        let me = self
            .linked
            .iter()
            .find(|(_, f)| *f == Some(id))
            .map(|(l, _)| l.clone())
            .unwrap_or_else(|| Linked {
                // What dlopen names it by: its soname, or else its file's.
                name: soname(path).unwrap_or_else(|| short(path)),
                path: path.to_owned(),
            });
        let mine: Vec<usize> = (0..self.requests.len())
            .filter(|&i| {
                self.requests[i]
                    .object
                    .as_ref()
                    .is_some_and(|o| o.matches(&me))
            })
            .collect();
        for &i in &mine {
            self.seen[i] = true;
        }
        if mine.is_empty() || self.files.contains_key(&id) {
            return;
        }
        let resolved = self.resolve(path, &mine, false);
        match resolved {
            Ok((mut fp, skipped)) => {
                self.note_skipped(path, skipped);
                self.number(&mut fp);
                self.files.insert(id, fp);
            }
            Err(e) => self
                .warnings
                .push(format!("{} not probed: {e}", path.display())),
        }
    }

    /// The probes' hits, from `column_hits` (hits by counter column).
    pub(super) fn hits(&self, column_hits: &[u64]) -> Vec<ProbeHits> {
        let mut files: Vec<&FileProbes> = self.files.values().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
            .into_iter()
            .flat_map(|fp| {
                let entries = fp
                    .sites
                    .iter()
                    .filter(|(s, _)| !matches!(s.action, probes::Action::Exit { .. }));
                entries.map(|(s, c)| ProbeHits {
                    spec: self.requests[s.place.request].spec.clone(),
                    symbol: s.place.symbol.clone(),
                    offset: s.place.offset,
                    address: format!("{:#x}", s.place.addr.0),
                    hits: column_hits.get(*c).copied().unwrap_or(0),
                    kind: s.kind.name().into(),
                    object: fp.path.clone(),
                })
            })
            .collect()
    }

    /// Each probe's counter column and label (`OBJECT:FUNCTION`), exits
    /// left out: what the report's per-process hits name them.
    pub(super) fn labelled_columns(&self) -> Vec<(usize, String)> {
        self.files
            .values()
            .flat_map(|fp| {
                let object = short(Path::new(&fp.path));
                fp.sites
                    .iter()
                    .filter(|(s, _)| !matches!(s.action, probes::Action::Exit { .. }))
                    .map(move |(s, c)| (*c, format!("{object}:{}", s.label())))
            })
            .collect()
    }

    /// The timed functions' calls, from `column_hits` (hits by counter
    /// column), labelled `OBJECT:FUNCTION`.
    pub(super) fn latency(&self, column_hits: &[u64]) -> Vec<crate::report::Latency> {
        let Some(placed) = &self.placed else {
            return Vec::new();
        };
        let mut files: Vec<&FileProbes> = self.files.values().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut v = Vec::new();
        for fp in files {
            let object = short(Path::new(&fp.path));
            for (s, c) in &fp.sites {
                let Some(f) = s.timed else { continue };
                let snap = placed.counters.stats(f as usize).snapshot();
                let hits = column_hits.get(*c).copied().unwrap_or(0);
                v.push(crate::report::Latency::new(
                    format!("{object}:{}", s.label()),
                    hits,
                    &snap,
                ));
            }
        }
        v
    }

    /// Each object served, as the report gives it: one entry per file
    /// (its mappings at several addresses added up).
    pub(super) fn stats(&self, server: &Server) -> Vec<ObjectStats> {
        let mut out: Vec<ObjectStats> = Vec::new();
        for (id, path) in &self.objects {
            let s = server.object_stats(*id);
            match out.iter_mut().find(|o| o.path == *path) {
                Some(o) => o.add(&s),
                None => out.push(ObjectStats::new(path.clone(), &s)),
            }
        }
        out
    }

    /// What the user must hear at exit: what was passed over, and the
    /// requests whose object the program never mapped.
    pub(super) fn warnings(&self) -> Vec<String> {
        let mut w = self.warnings.clone();
        for (r, seen) in self.requests.iter().zip(&self.seen) {
            let at_start = self
                .linked
                .iter()
                .any(|(l, _)| r.object.as_ref().is_some_and(|o| o.matches(l)));
            if !seen && !at_start {
                let object = r
                    .object
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                w.push(format!(
                    "'{}' probed nothing: the program never mapped {object} (objects mapped with \
                     the program's own mmap, not the dynamic loader, are not seen)",
                    r.spec
                ));
            }
        }
        w
    }
}

/// The cache's kind for a file's resolved sites (see [`SharedObjects::resolve`]).
const SITES_KIND: &str = "sites";

/// A file's resolved sites as the cache keeps them: the sites (with their
/// columns, numbered later), the neighbours moved for short jumps, and
/// what was passed over.
type KeptSites = (Vec<ObjectSite>, Vec<probes::Evicted>, Vec<(String, String)>);

/// Counter columns kept for objects mapped after start.
const PENDING_COLUMNS: usize = 1024;

/// Statistics slots kept for timed functions of objects mapped after start.
const PENDING_TIMED: usize = 256;

/// The timed functions among `sites` (numbered from 0 by `choose`).
fn funcs(sites: &[ObjectSite]) -> usize {
    sites.iter().filter(|(s, _)| s.timed.is_some()).count()
}

/// `file` (at `path`) mapped read-only (memmap2 maps it shared: the
/// kernel's own uprobes write breakpoints into private maps only).
fn map_file(file: &std::fs::File, path: &Path) -> std::result::Result<Arc<memmap2::Mmap>, String> {
    crate::sys::mm::map_program(file)
        .map(Arc::new)
        .map_err(|e| format!("mapping {}: {e}", path.display()))
}

/// The object serving `len` bytes of a file (its contents `bytes`) from
/// `offset`, at `addr`, with `patches` in: its page images.
fn object_for(
    server: &mut Server,
    bytes: &Arc<memmap2::Mmap>,
    (addr, len, offset): (u64, u64, u64),
    patches: &[(u64, Vec<u8>)],
) -> ObjectId {
    let pages = (page_up(len) / PAGE_SIZE) as usize;
    let file_end = (bytes.len() as u64).min(offset + page_up(len));
    let range = TextRange { start: addr, pages };
    let parts = [(range, offset.min(file_end) as usize..file_end as usize)];
    let image = crate::plan::patched_image(bytes, &parts, &[], patches);
    server.add_object(Arc::new(image))
}

/// A file's name without its directories.
fn short(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The `DT_SONAME` of the shared object at `path`, if it has one.
fn soname(path: &Path) -> Option<String> {
    let image = Image::open_object(path).ok()?;
    let elf = goblin::elf::Elf::parse(&image.bytes).ok()?;
    elf.soname.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn runs_cover_the_pages_patches_write_joined_when_they_touch() {
        let patches = vec![
            // Across a page boundary: both pages.
            (0x1000_0ffe, vec![0xe9; 5]),
            // The same page again, and the next one: one run.
            (0x1000_1010, vec![0xcc]),
            (0x1000_2000, vec![0xcc]),
            // Far away: a run of its own.
            (0x1000_9000 + 7, vec![0xe9; 5]),
            // Outside the mapping: left out.
            (0x2000_0000, vec![0xcc]),
            (0x1000_0000 - 8, vec![0xcc]),
        ];
        assert_eq!(
            runs_of(&patches, 0x1000_0000, 0x1000_a000),
            [(0x1000_0000, 3 * P), (0x1000_9000, P)]
        );
    }

    #[test]
    fn too_many_runs_are_joined_across_the_smallest_gaps() {
        // MAX_RUNS + 2 one-page runs, every other page; the last two gaps
        // are the widest.
        let n = MAX_RUNS as u64 + 2;
        let mut patches: Vec<(u64, Vec<u8>)> = (0..n).map(|i| (i * 2 * P, vec![0xcc])).collect();
        patches.push((2 * n * P + 10 * P, vec![0xcc]));
        patches.push((2 * n * P + 30 * P, vec![0xcc]));
        let runs = runs_of(&patches, 0, u64::MAX / 2);
        assert_eq!(runs.len(), MAX_RUNS);
        // Every page with a patch is in a run, and the two far pages stay
        // runs of their own.
        for (at, _) in &patches {
            assert!(
                runs.iter().any(|(a, l)| *a <= *at && *at < a + l),
                "{at:#x}"
            );
        }
        assert_eq!(runs[MAX_RUNS - 1], (2 * n * P + 30 * P, P));
        assert_eq!(runs[MAX_RUNS - 2], (2 * n * P + 10 * P, P));
    }

    #[test]
    fn an_answer_page_holds_its_status_and_number() {
        use crate::probes::detour::ANSWER_SEQ;
        let page = answer_page(RUNS, 7);
        let word =
            |at: u64| u64::from_le_bytes(page[at as usize..at as usize + 8].try_into().unwrap());
        assert_eq!(word(0), RUNS);
        assert_eq!(word(ANSWER_SEQ) as u32, 7);
    }
}
