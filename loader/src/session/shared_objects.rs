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

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uprobe_runtime::area::Shared;
use uprobe_runtime::{Bell, ObjectId, Server, TextRange, PAGE_SIZE};

use crate::addr::{page_up, Bias};
use crate::elf::Image;
use crate::error::{Error, Result};
use crate::plan::ObjectsArea;
use crate::probes::detour::{slot, SERVED};
use crate::probes::{self, Kind, Linked, ObjectSite, ProbeMode, Request};
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
}

/// The probes of the program's shared objects, before and while it runs.
pub(super) struct SharedObjects {
    /// The `OBJECT:SPEC` requests.
    requests: Vec<Request>,
    mode: ProbeMode,
    unsafe_addrs: bool,
    /// The objects mapped at start, with their files' identities.
    linked: Vec<(Linked, Option<FileId>)>,
    /// Sites by file.
    files: HashMap<FileId, FileProbes>,
    /// Counter columns `[next, end)` still free.
    next: usize,
    end: usize,
    /// What an earlier ring built: (file, offset, address, length) → object.
    built: HashMap<(FileId, u64, u64, u64), ObjectId>,
    /// Every object built, and its file's path.
    objects: Vec<(ObjectId, String)>,
    /// Whether each request matched an object the program mapped.
    seen: Vec<bool>,
    /// What went wrong or was passed over, for the warnings at exit.
    warnings: Vec<String>,
}

/// Whether `r` asks for more than counting, which objects cannot do yet.
fn counts_only(r: &Request) -> Result<()> {
    let what = if r.trace.is_some() {
        Some("--trace")
    } else if r.latency || r.ret.is_some() {
        Some("--latency and return probes")
    } else {
        None
    };
    match what {
        Some(what) => Err(Error::Probe(probes::ProbeError::BadSpec {
            spec: r.spec.clone(),
            why: format!(
                "{what} on functions of shared objects is not built yet; -p counts their calls"
            ),
        })),
        None => Ok(()),
    }
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl SharedObjects {
    /// The objects' probes for `requests` (each naming an object) of a
    /// program whose objects at start are `linked`: each object mapped at
    /// start that a request names has its sites resolved and chosen now
    /// (an unknown function is an error before the program starts); the
    /// others wait for an object to be mapped. `interp` is the program's
    /// interpreter, whose functions cannot be probed yet.
    pub(super) fn new(
        requests: Vec<Request>,
        linked: Vec<Linked>,
        interp: &Path,
        mode: ProbeMode,
        unsafe_addrs: bool,
    ) -> Result<(SharedObjects, usize)> {
        if mode == ProbeMode::Int3 {
            return Err(Error::Probe(probes::ProbeError::BadSpec {
                spec: requests[0].spec.clone(),
                why: "--probe-mode int3 does not reach shared objects yet (their probes are jumps)"
                    .into(),
            }));
        }
        for r in &requests {
            counts_only(r)?;
        }
        let interp_id = file_id(interp);
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
            linked: Vec::new(),
            files: HashMap::new(),
            next: 0,
            end: 0,
            built: HashMap::new(),
            objects: Vec::new(),
            warnings: Vec::new(),
        };
        let mut columns = 0;
        let mut pending = false;
        for (i, r) in s.requests.iter().enumerate() {
            let object = r.object.as_ref().expect("only OBJECT:SPEC requests");
            let matched: Vec<&(Linked, Option<FileId>)> =
                linked.iter().filter(|(l, _)| object.matches(l)).collect();
            if matched
                .iter()
                .any(|(_, id)| id.is_some() && *id == interp_id)
            {
                return Err(Error::Probe(probes::ProbeError::BadSpec {
                    spec: r.spec.clone(),
                    why: format!(
                        "{object} is the dynamic loader, whose functions cannot be probed yet"
                    ),
                }));
            }
            if matched.is_empty() || matches!(object, probes::ObjectPattern::Glob(_)) {
                pending = true;
            }
            let _ = i;
        }
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
            if mine.is_empty() || Some(id) == interp_id {
                continue;
            }
            let (fp, skipped) = s.resolve(&l.path, &mine, true)?;
            columns += fp.sites.len();
            s.note_skipped(&l.path, skipped);
            files.push((id, fp));
        }
        // Room for objects mapped later (dlopen), or again elsewhere.
        if pending {
            columns += PENDING_COLUMNS;
        }
        s.linked = linked;
        s.files = files.into_iter().collect();
        s.end = columns;
        Ok((s, columns))
    }

    /// Counter columns `[first, first + columns)` are the objects' (after
    /// the program's sites): numbers the sites resolved so far.
    pub(super) fn place_columns(&mut self, first: usize) {
        let mut next = first;
        let mut ids: Vec<FileId> = self.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            for (_, c) in &mut self.files.get_mut(&id).expect("listed").sites {
                *c = next;
                next += 1;
            }
        }
        self.end += first;
        self.next = next;
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
        let syms = Symbols::read(&image);
        let mut resolver = probes::Resolver::new(&image, &syms, self.unsafe_addrs);
        for &i in mine {
            let mut r = self.requests[i].clone();
            r.object = None;
            resolver.add(r)?;
        }
        let resolution = resolver.finish();
        let chosen = probes::choose(&image, &resolution, self.mode)?;
        let mut skipped = chosen.skipped;
        let mut sites = Vec::new();
        for s in chosen.sites {
            if matches!(s.kind, Kind::Jump { .. } | Kind::JumpPadding { .. }) {
                sites.push((s, 0));
                continue;
            }
            let why = "its jump would need moving other code (a short jump or a punned one), \
                       which shared objects do not do yet"
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
        // The report repeats each site's spec as the user wrote it.
        for (s, _) in &mut sites {
            s.place.request = mine[s.place.request.min(mine.len() - 1)];
        }
        Ok((
            FileProbes {
                path: std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.to_owned())
                    .display()
                    .to_string(),
                image,
                sites,
            },
            skipped,
        ))
    }

    fn note_skipped(&mut self, path: &Path, skipped: Vec<(String, String)>) {
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
        counters: &Shared,
        bell: &Bell,
    ) {
        let status = match self.serve(server, area, counters, bell) {
            Ok(()) => SERVED,
            Err(why) => {
                self.warnings.push(why);
                2
            }
        };
        let mut page = [0u8; PAGE_SIZE as usize];
        page[..8].copy_from_slice(&status.to_le_bytes());
        let _ = server.answer_bell(bell, &page);
    }

    fn serve(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        counters: &Shared,
        bell: &Bell,
    ) -> std::result::Result<(), String> {
        let req = area
            .request(bell.addr)
            .ok_or("a ring outside the doorbells")?;
        let u32_at = |o: u64| {
            u32::from_le_bytes(
                req[o as usize..o as usize + 4]
                    .try_into()
                    .unwrap_or_default(),
            )
        };
        let u64_at = |o: u64| {
            u64::from_le_bytes(
                req[o as usize..o as usize + 8]
                    .try_into()
                    .unwrap_or_default(),
            )
        };
        let (tid, fd) = (u32_at(slot::TID), u32_at(slot::FD));
        let (addr, len, offset) = (u64_at(slot::ADDR), u64_at(slot::LEN), u64_at(slot::OFFSET));
        if bell.tid != 0 && tid != bell.tid {
            return Err(format!(
                "a mapping request from thread {} rang as thread {tid}",
                bell.tid
            ));
        }
        let proc_fd = format!("/proc/{tid}/fd/{fd}");
        let path = std::fs::read_link(&proc_fd).map_err(|e| format!("{proc_fd}: {e}"))?;
        let file = std::fs::File::open(&proc_fd).map_err(|e| format!("{proc_fd}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{proc_fd}: {e}"))?;
        let id: FileId = (meta.dev(), meta.ino());
        let key = (id, offset, addr, len);
        let object = match self.built.get(&key) {
            Some(&o) => o,
            None => {
                let o = self.build(server, area, counters, id, &path, &file, addr, len, offset)?;
                self.built.insert(key, o);
                o
            }
        };
        let end = addr + page_up(len);
        server.unmap_range(bell.mm, addr, end);
        server
            .register(bell.mm, addr, end - addr)
            .map_err(|e| format!("registering {} at {addr:#x}: {e}", path.display()))?;
        server
            .map_object(bell.mm, object, 0)
            .map_err(|e| format!("serving {} at {addr:#x}: {e}", path.display()))?;
        Ok(())
    }

    /// The object for `len` bytes of the file `id` (at `path`, open as
    /// `file`) from `offset`, mapped at `addr`: its page images, with its
    /// probes' jumps, whose trampolines are written to `area` now.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        server: &mut Server,
        area: &mut ObjectsArea,
        counters: &Shared,
        id: FileId,
        path: &Path,
        file: &std::fs::File,
        addr: u64,
        len: u64,
        offset: u64,
    ) -> std::result::Result<ObjectId, String> {
        self.learn(id, path);
        // SAFETY (of the mapping): a private read-only map of the file the
        // program maps; a writer changing it would change the program's
        // copy too (MAP_PRIVATE pages not yet touched follow the file).
        let bytes = Arc::new(
            crate::sys::mm::map_program(file)
                .map_err(|e| format!("mapping {}: {e}", path.display()))?,
        );
        let pages = (page_up(len) / PAGE_SIZE) as usize;
        let file_end = (bytes.len() as u64).min(offset + page_up(len));
        let range = TextRange { start: addr, pages };
        let parts = [(range, offset.min(file_end) as usize..file_end as usize)];
        let mut patches = Vec::new();
        if let Some(fp) = self.files.get(&id) {
            // Where the segment that holds `offset` puts link addresses.
            let bias = fp
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
                });
            if let Some(bias) = bias {
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
                let code = probes::object_code(
                    &fp.image,
                    bias,
                    &inside,
                    counters,
                    area.row_page,
                    |ip| crate::plan::within_reach(bounds, ip),
                    || area.take(uprobe_runtime::area::SLOT_BYTES as u64),
                );
                for (at, c) in &code.trampolines {
                    area.write(*at, c);
                }
                patches = code.patches;
                let skipped = code.skipped;
                let p = PathBuf::from(&fp.path);
                self.note_skipped(&p, skipped);
            }
        }
        let image = crate::plan::patched_image(&bytes, &parts, &[], &patches);
        let object = server.add_object(Arc::new(image));
        self.objects.push((object, path.display().to_string()));
        Ok(object)
    }

    /// Resolves the requests for a file mapped for the first time, unless
    /// done: every request that names it, found among the objects mapped
    /// at start by identity, or else by its file name.
    fn learn(&mut self, id: FileId, path: &Path) {
        let me = self
            .linked
            .iter()
            .find(|(_, f)| *f == Some(id))
            .map(|(l, _)| l.clone())
            .unwrap_or_else(|| Linked {
                name: path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
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
                let free = self.end - self.next;
                if fp.sites.len() > free {
                    self.warnings.push(format!(
                        "{} of the matched functions of {} not probed: no counters left for them",
                        fp.sites.len() - free,
                        short(path)
                    ));
                    fp.sites.truncate(free);
                }
                for (_, c) in &mut fp.sites {
                    *c = self.next;
                    self.next += 1;
                }
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
                fp.sites.iter().map(|(s, c)| ProbeHits {
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

/// Counter columns kept for objects mapped after start.
const PENDING_COLUMNS: usize = 1024;

fn short(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
