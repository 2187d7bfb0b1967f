//! The log-structured file backend.

mod format;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use self::format::{
    ENTRY_OVERHEAD, KIND_DELETE, KIND_DELETE_RANGE, KIND_PUT, REC_HEADER_LEN, RecordCheck, SEG_HEADER_LEN,
    SEG_MAGIC,
};
use crate::blob::BlobDir;
use crate::engine::{self, Engine, RawOp, engine_store_methods, lock, read, write};
use crate::error::{Result, StoreError};
use crate::group_commit::GroupCommit;
use crate::keys::{IndexKey, TAG_KV};
use crate::lock::{DirLock, ensure_dir, require_dir, sync_dir};
use crate::{Limits, Store};

/// Tuning knobs of a [`FileStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct FileStoreOptions {
    /// Size at which the active segment file is closed and a new one started (clamped to 4 KiB..1 GiB).
    pub segment_size: u64,
    /// Automatic compaction only runs when the segments hold at least this many bytes.
    pub compaction_min_bytes: u64,
    /// Automatic compaction runs when more than this fraction of the segment bytes is garbage.
    pub compaction_garbage_ratio: f64,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            segment_size: 64 << 20,
            compaction_min_bytes: 16 << 20,
            compaction_garbage_ratio: 0.5,
        }
    }
}

impl FileStoreOptions {
    /// Sets [`FileStoreOptions::segment_size`].
    pub fn with_segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets [`FileStoreOptions::compaction_min_bytes`].
    pub fn with_compaction_min_bytes(mut self, bytes: u64) -> Self {
        self.compaction_min_bytes = bytes;
        self
    }

    /// Sets [`FileStoreOptions::compaction_garbage_ratio`].
    pub fn with_compaction_garbage_ratio(mut self, ratio: f64) -> Self {
        self.compaction_garbage_ratio = ratio;
        self
    }
}

/// What [`FileStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files replayed.
    pub segments: usize,
    /// Intact records replayed.
    pub records: u64,
    /// Set when an incomplete or damaged tail of the last segment (a write cut short by a crash) was
    /// truncated away: the file and the offset it was cut at.
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// Bytes removed by that truncation.
    pub truncated_bytes: u64,
    /// Records in the middle of the log whose body failed its checksum; their entries were indexed
    /// individually and reading a damaged value fails with [`StoreError::Corruption`].
    pub damaged_records: Vec<(PathBuf, u64)>,
    /// Set by a read-only open ([`FileStore::open_read_only`]), which never truncates, instead of
    /// `truncated_tail`: an incomplete tail of the last segment (or a last segment shorter than its
    /// header) was left in place and ignored: the file and the offset the ignored bytes start at.
    pub ignored_tail: Option<(PathBuf, u64)>,
    /// Bytes ignored there.
    pub ignored_bytes: u64,
}

/// Size and activity counters of a [`FileStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStoreStats {
    /// Live index entries (user keys, log entries and log bounds records).
    pub entries: usize,
    /// Segment files.
    pub segments: usize,
    /// Bytes in all segment files.
    pub total_bytes: u64,
    /// Bytes of live entries.
    pub live_bytes: u64,
    /// fdatasync rounds run by [`Store::sync`] (group commit shares one round among concurrent callers).
    pub sync_rounds: u64,
    /// Compactions completed since open.
    pub compactions: u64,
}

/// Where a live value is: segment id, value offset in the segment, value length.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u32,
    off: u32,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

#[derive(Debug)]
struct State {
    index: BTreeMap<IndexKey, Loc>,
    segments: BTreeMap<u32, Segment>,
    active: u32,
    live_bytes: u64,
    total_bytes: u64,
    closed: bool,
    auto_compaction: bool,
    compactions: u64,
    scratch: Vec<u8>,
}

/// The embedded, crash-safe default backend: a log-structured store of checksummed records.
///
/// * **Layout**: `<dir>/LOCK` (the directory lock), `<dir>/NNNNNNNNNN.seg` (append-only segment files),
///   `<dir>/blobs/` (one file per blob). The record format is in `docs/design.md` §7.
/// * **Writes** append one record per operation or batch (one `pwrite`); a batch is one record, so it is
///   all-or-nothing. Writes are durable after the next [`Store::sync`], which `fdatasync`s the active
///   segment (group commit). Closed segments, segment creation and compaction are synced when they happen.
/// * **Reads** look the key up in an in-memory index (key to segment, offset, length) and read the value
///   with one positioned read, verifying its checksum.
/// * **Open** replays all segments sequentially to rebuild the index. An incomplete last record (a crash
///   during a write) is truncated away; damage elsewhere is reported as [`StoreError::Corruption`].
/// * **Compaction** rewrites the live entries into new segments once garbage passes the configured ratio,
///   fsyncs them and then deletes the old segments. It runs inside a write and blocks the store meanwhile.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    opts: FileStoreOptions,
    writer: Mutex<()>,
    state: RwLock<State>,
    gc: GroupCommit,
    blobs: BlobDir,
    dir_lock: Mutex<Option<DirLock>>,
    recovery: RecoveryReport,
    read_only: bool,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() == 10 && stem.bytes().all(|b| b.is_ascii_digit()) { stem.parse().ok() } else { None }
}

fn entry_size(key_len: usize, val_len: u32) -> u64 {
    ENTRY_OVERHEAD + key_len as u64 + u64::from(val_len)
}

/// The key to show in errors: user keys without their tag byte.
fn visible_key(internal: &[u8]) -> Vec<u8> {
    match internal.split_first() {
        Some((&TAG_KV, rest)) => rest.to_vec(),
        _ => internal.to_vec(),
    }
}

impl State {
    fn apply_put(&mut self, key: &[u8], loc: Loc) {
        self.live_bytes += entry_size(key.len(), loc.len);
        if let Some(old) = self.index.get_mut(key) {
            self.live_bytes -= entry_size(key.len(), old.len);
            *old = loc;
        } else {
            self.index.insert(key.into(), loc);
        }
    }

    fn apply_delete(&mut self, key: &[u8]) {
        if let Some(old) = self.index.remove(key) {
            self.live_bytes -= entry_size(key.len(), old.len);
        }
    }

    fn apply_delete_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        let doomed: Vec<IndexKey> = self
            .index
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.apply_delete(&k);
        }
    }

    fn read_value(&self, key: &[u8], loc: Loc) -> Result<Vec<u8>> {
        let seg = self.segments.get(&loc.seg).ok_or_else(|| StoreError::Corruption {
            file: PathBuf::new(),
            offset: u64::from(loc.off),
            key: Some(visible_key(key)),
            reason: format!("index points to missing segment {}", loc.seg),
        })?;
        let mut buf = vec![0u8; loc.len as usize + 4];
        let corrupt = |reason: String| StoreError::Corruption {
            file: seg.path.clone(),
            offset: u64::from(loc.off),
            key: Some(visible_key(key)),
            reason,
        };
        seg.file.read_exact_at(&mut buf, u64::from(loc.off)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt("value extends beyond the end of the segment".into())
            } else {
                StoreError::io("read value", &seg.path, e)
            }
        })?;
        let n = loc.len as usize;
        let stored = u32::from_le_bytes([buf[n], buf[n + 1], buf[n + 2], buf[n + 3]]);
        if format::value_crc(key, &buf[..n]) != stored {
            return Err(corrupt("value checksum mismatch".into()));
        }
        buf.truncate(n);
        Ok(buf)
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    ///
    /// Fails with [`StoreError::Locked`] if another handle or process has the directory open, and with
    /// [`StoreError::Corruption`] if a segment is damaged beyond the torn tail that a crash can leave.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        FileStore::open_with(dir, FileStoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` with `opts`.
    pub fn open_with(dir: impl AsRef<Path>, mut opts: FileStoreOptions) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        opts.segment_size = opts.segment_size.clamp(4 << 10, 1 << 30);
        ensure_dir(&dir)?;
        let dir_lock = DirLock::acquire(&dir)?;
        let blobs = BlobDir::open_dir(&dir)?;
        let (state, recovery) = recover(&dir, false)?;
        Ok(FileStore {
            dir,
            opts,
            writer: Mutex::new(()),
            state: RwLock::new(state),
            gc: GroupCommit::default(),
            blobs,
            dir_lock: Mutex::new(Some(dir_lock)),
            recovery,
            read_only: false,
        })
    }

    /// Opens an existing store for writing like [`FileStore::open`], but never creates one: fails with
    /// [`StoreError::NotFound`] (creating nothing) if `dir` does not exist or holds no segment file.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref();
        require_store(dir)?;
        FileStore::open(dir)
    }

    /// Opens an existing store read-only: every write fails with [`StoreError::ReadOnly`],
    /// [`Store::is_read_only`] is true, [`Store::sync`] has nothing to do, and the open itself writes
    /// nothing, so a store in a directory this process may not write to can be read.
    ///
    /// * It never creates the directory, the lock file, a segment or the blob directory: a missing
    ///   directory, or one without segment files, is [`StoreError::NotFound`].
    /// * It never repairs: an incomplete tail of the last segment (a crash during a write) is left in
    ///   place and ignored in memory ([`RecoveryReport::ignored_tail`]); leftover blob temp files stay.
    ///   Damage elsewhere fails the open with [`StoreError::Corruption`] as in [`FileStore::open`].
    /// * It takes a **shared** lock on `<dir>/LOCK`: it fails with [`StoreError::Locked`] while a writer
    ///   holds the store, any number of read-only handles may be open at once, and a writer cannot
    ///   open the store until they are closed.
    /// * If `<dir>/LOCK` does not exist or this process lacks the permission to open it, it reads
    ///   **without a lock**. That is safe for this format: the open replays a snapshot (the segments
    ///   listed once, each opened and read once), and a writer never changes a byte of a segment
    ///   below the end of its intact records: it appends records, truncates only torn tails beyond
    ///   them, and compaction copies live entries into new segments before deleting old ones, whose
    ///   open file descriptors keep them readable here. So the handle sees the state as of some
    ///   moment during its open (a prefix of the log; a record being written is ignored like a torn
    ///   tail, and replaying the old segments, or their surviving suffix, with a partial compaction
    ///   copy gives the same state, see `docs/design.md` §7.3), and it never sees later writes. If a
    ///   listed segment is deleted by a concurrent compaction before it is opened, the open starts
    ///   over (up to 5 times).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        require_store(&dir)?;
        let dir_lock = DirLock::acquire_shared(&dir)?;
        let mut attempt = 0;
        let (state, recovery) = loop {
            attempt += 1;
            match recover(&dir, true) {
                Err(StoreError::Io { op: "open segment", source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && dir_lock.is_none() && attempt < 5 => {
                }
                other => break other?,
            }
        };
        Ok(FileStore {
            blobs: BlobDir::open_read_only(&dir),
            dir,
            opts: FileStoreOptions::default(),
            writer: Mutex::new(()),
            state: RwLock::new(state),
            gc: GroupCommit::default(),
            dir_lock: Mutex::new(dir_lock),
            recovery,
            read_only: true,
        })
    }

    /// What the open found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Size and activity counters.
    pub fn stats(&self) -> FileStoreStats {
        let st = read(&self.state);
        FileStoreStats {
            entries: st.index.len(),
            segments: st.segments.len(),
            total_bytes: st.total_bytes,
            live_bytes: st.live_bytes,
            sync_rounds: self.gc.flush_count(),
            compactions: st.compactions,
        }
    }

    /// Rewrites all live entries into fresh segments and deletes the old ones, regardless of the garbage
    /// ratio. Blocks all other operations while it runs.
    pub fn compact(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _g = self.write_guard()?;
        let mut st = write(&self.state);
        self.compact_locked(&mut st)
    }

    /// Closes the active segment (fdatasync) and starts a new one (created, fsynced, directory fsynced).
    fn roll(&self, st: &mut State) -> Result<()> {
        let cur = &st.segments[&st.active];
        cur.file.sync_data().map_err(|e| StoreError::io("fdatasync segment", &cur.path, e))?;
        let id = st.active.checked_add(1).ok_or_else(|| StoreError::Corruption {
            file: self.dir.clone(),
            offset: 0,
            key: None,
            reason: "segment id space exhausted".into(),
        })?;
        let seg = create_segment(&self.dir, id)?;
        st.total_bytes += seg.len;
        st.segments.insert(id, seg);
        st.active = id;
        Ok(())
    }

    /// Appends the record in `buf` to the active segment (rolling first if it would overflow); returns
    /// (segment id, offset of the record).
    fn append_record(&self, st: &mut State, buf: &[u8]) -> Result<(u32, u64)> {
        let active_len = st.segments[&st.active].len;
        if active_len > SEG_HEADER_LEN && active_len + buf.len() as u64 > self.opts.segment_size {
            self.roll(st)?;
        }
        let seg = st.segments.get_mut(&st.active).ok_or(StoreError::Closed)?;
        let off = seg.len;
        seg.file.write_all_at(buf, off).map_err(|e| StoreError::io("write record", &seg.path, e))?;
        seg.len += buf.len() as u64;
        st.total_bytes += buf.len() as u64;
        Ok((st.active, off))
    }

    fn needs_compaction(&self, st: &State) -> bool {
        st.auto_compaction
            && st.total_bytes >= self.opts.compaction_min_bytes
            && (st.total_bytes - st.live_bytes.min(st.total_bytes)) as f64
                > self.opts.compaction_garbage_ratio * st.total_bytes as f64
    }

    fn compact_locked(&self, st: &mut State) -> Result<()> {
        let old: Vec<u32> = st.segments.keys().copied().collect();
        self.roll(st)?;
        let mut new_locs = Vec::with_capacity(st.index.len());
        let mut buf = Vec::with_capacity(1 << 20);
        let mut pending: Vec<(usize, u32)> = Vec::new(); // (value offset in buf, len)
        format::begin_record(&mut buf);
        let keys: Vec<(IndexKey, Loc)> = st.index.iter().map(|(k, l)| (k.clone(), *l)).collect();
        for (key, loc) in &keys {
            let value = st.read_value(key, *loc)?;
            let off = format::push_entry(&mut buf, KIND_PUT, key, &value);
            pending.push((off, loc.len));
            if buf.len() >= 1 << 20 {
                self.flush_compaction_record(st, &mut buf, &mut pending, &mut new_locs)?;
            }
        }
        self.flush_compaction_record(st, &mut buf, &mut pending, &mut new_locs)?;
        let active = &st.segments[&st.active];
        active.file.sync_data().map_err(|e| StoreError::io("fdatasync segment", &active.path, e))?;
        sync_dir(&self.dir)?;
        // The new segments hold every live entry: switch the index, then drop the old segments (oldest
        // first, so a crash in between leaves a replayable suffix).
        for (slot, loc) in st.index.values_mut().zip(new_locs) {
            *slot = loc;
        }
        for id in old {
            if let Some(seg) = st.segments.remove(&id) {
                st.total_bytes -= seg.len;
                std::fs::remove_file(&seg.path)
                    .map_err(|e| StoreError::io("remove compacted segment", &seg.path, e))?;
            }
        }
        sync_dir(&self.dir)?;
        st.compactions += 1;
        tracing::debug!(dir = %self.dir.display(), total = st.total_bytes, live = st.live_bytes, "compacted");
        Ok(())
    }

    fn flush_compaction_record(
        &self,
        st: &mut State,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(usize, u32)>,
        new_locs: &mut Vec<Loc>,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        format::finish_record(buf);
        let (seg, off) = self.append_record(st, buf)?;
        for (voff, len) in pending.drain(..) {
            new_locs.push(Loc { seg, off: (off + voff as u64) as u32, len });
        }
        format::begin_record(buf);
        Ok(())
    }

    fn check_open(st: &State) -> Result<()> {
        if st.closed { Err(StoreError::Closed) } else { Ok(()) }
    }
}

fn create_segment(dir: &Path, id: u32) -> Result<Segment> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StoreError::io("create segment", &path, e))?;
    file.write_all_at(&format::segment_header(id), 0)
        .map_err(|e| StoreError::io("write segment", &path, e))?;
    file.sync_data().map_err(|e| StoreError::io("fdatasync segment", &path, e))?;
    sync_dir(dir)?;
    Ok(Segment { file: Arc::new(file), path, len: SEG_HEADER_LEN })
}

/// The segment ids in `dir`, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io("list store directory", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list store directory", dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Fails with [`StoreError::NotFound`] unless `dir` is a directory with at least one segment file.
fn require_store(dir: &Path) -> Result<()> {
    require_dir(dir)?;
    if list_segments(dir)?.is_empty() {
        return Err(StoreError::NotFound { path: dir.to_path_buf(), reason: "the directory holds no store" });
    }
    Ok(())
}

/// Replays all segments of `dir` into a fresh index. A read-only replay opens the segments read-only
/// and changes nothing: it neither creates a first segment nor repairs a torn tail.
fn recover(dir: &Path, read_only: bool) -> Result<(State, RecoveryReport)> {
    let ids = list_segments(dir)?;
    let mut st = State {
        index: BTreeMap::new(),
        segments: BTreeMap::new(),
        active: 0,
        live_bytes: 0,
        total_bytes: 0,
        closed: false,
        auto_compaction: true,
        compactions: 0,
        scratch: Vec::new(),
    };
    let mut report = RecoveryReport::default();
    if ids.is_empty() {
        if read_only {
            return Err(StoreError::NotFound {
                path: dir.to_path_buf(),
                reason: "the directory holds no store",
            });
        }
        let seg = create_segment(dir, 1)?;
        st.total_bytes = seg.len;
        st.segments.insert(1, seg);
        st.active = 1;
        return Ok((st, report));
    }
    let mut buf = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|e| StoreError::io("open segment", &path, e))?;
        buf.clear();
        file.read_to_end(&mut buf).map_err(|e| StoreError::io("read segment", &path, e))?;
        let corrupt = |offset: u64, key: Option<Vec<u8>>, reason: String| StoreError::Corruption {
            file: path.clone(),
            offset,
            key,
            reason,
        };
        let mut valid_end = replay_segment(&mut st, &mut report, &buf, id, is_last, &path)?;
        if (buf.len() as u64) < SEG_HEADER_LEN || &buf[..8] != SEG_MAGIC {
            if is_last && (buf.len() as u64) < SEG_HEADER_LEN && read_only {
                // A segment being created (or left so by a crash): nothing in it to read.
                valid_end = buf.len() as u64;
                if !buf.is_empty() {
                    report.ignored_tail = Some((path.clone(), 0));
                    report.ignored_bytes = buf.len() as u64;
                }
            } else if is_last && (buf.len() as u64) < SEG_HEADER_LEN {
                // Crash while the segment was being created: rewrite its header.
                file.set_len(0).map_err(|e| StoreError::io("truncate segment", &path, e))?;
                file.write_all_at(&format::segment_header(id), 0)
                    .map_err(|e| StoreError::io("write segment", &path, e))?;
                valid_end = SEG_HEADER_LEN;
            } else {
                return Err(corrupt(0, None, "bad segment header".into()));
            }
        }
        if valid_end < buf.len() as u64 && read_only {
            tracing::warn!(
                file = %path.display(),
                offset = valid_end,
                bytes = buf.len() as u64 - valid_end,
                "ignoring an incomplete tail (a crash, or a write in progress); a read-only open does not truncate it"
            );
            report.ignored_tail = Some((path.clone(), valid_end));
            report.ignored_bytes = buf.len() as u64 - valid_end;
        } else if valid_end < buf.len() as u64 {
            file.set_len(valid_end).map_err(|e| StoreError::io("truncate torn tail", &path, e))?;
            file.sync_all().map_err(|e| StoreError::io("fsync segment", &path, e))?;
            tracing::warn!(
                file = %path.display(),
                offset = valid_end,
                bytes = buf.len() as u64 - valid_end,
                "truncated an incomplete tail left by a crash"
            );
            report.truncated_tail = Some((path.clone(), valid_end));
            report.truncated_bytes = buf.len() as u64 - valid_end;
        }
        st.total_bytes += valid_end;
        st.segments.insert(id, Segment { file: Arc::new(file), path, len: valid_end });
        st.active = id;
        report.segments += 1;
    }
    Ok((st, report))
}

/// Replays one segment buffer; returns the end of its valid data.
fn replay_segment(
    st: &mut State,
    report: &mut RecoveryReport,
    buf: &[u8],
    id: u32,
    is_last: bool,
    path: &Path,
) -> Result<u64> {
    if (buf.len() as u64) < SEG_HEADER_LEN || &buf[..8] != SEG_MAGIC {
        return Ok(SEG_HEADER_LEN.min(buf.len() as u64));
    }
    let corrupt = |offset: usize, key: Option<Vec<u8>>, reason: String| StoreError::Corruption {
        file: path.to_path_buf(),
        offset: offset as u64,
        key,
        reason,
    };
    let mut pos = SEG_HEADER_LEN as usize;
    while pos < buf.len() {
        let (end, verify) = match format::check_record(buf, pos) {
            RecordCheck::Ok { end } => (end, false),
            RecordCheck::BadBody { end } => {
                if is_last && !format::intact_record_after(buf, end) {
                    return Ok(pos as u64); // torn tail
                }
                report.damaged_records.push((path.to_path_buf(), pos as u64));
                tracing::warn!(file = %path.display(), offset = pos, "record body checksum mismatch");
                (end, true)
            }
            RecordCheck::BadHeader { reason } => {
                if is_last && !format::intact_record_after(buf, pos + 1) {
                    return Ok(pos as u64); // torn tail
                }
                return Err(corrupt(pos, None, reason.into()));
            }
        };
        format::for_each_entry(buf, pos + REC_HEADER_LEN, end, verify, |e| {
            match e.kind {
                KIND_PUT => {
                    let loc = Loc { seg: id, off: e.value_off as u32, len: e.value.len() as u32 };
                    st.apply_put(e.key, loc);
                }
                KIND_DELETE => st.apply_delete(e.key),
                KIND_DELETE_RANGE => {
                    if verify
                        && format::value_crc(e.key, e.value) != stored_crc(buf, e.value_off + e.value.len())
                    {
                        return Err((e.value_off, "delete-range bound checksum mismatch".into()));
                    }
                    st.apply_delete_range(e.key, e.value);
                }
                _ => {}
            }
            Ok(())
        })
        .map_err(|(off, reason)| corrupt(off, None, reason))?;
        report.records += 1;
        pos = end;
    }
    Ok(pos as u64)
}

fn stored_crc(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

impl Engine for FileStore {
    fn write_guard(&self) -> Result<MutexGuard<'_, ()>> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let g = lock(&self.writer);
        FileStore::check_open(&read(&self.state))?;
        self.gc.check_poisoned()?;
        Ok(g)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let st = read(&self.state);
        FileStore::check_open(&st)?;
        match st.index.get(key) {
            Some(loc) => st.read_value(key, *loc).map(Some),
            None => Ok(None),
        }
    }

    fn raw_contains(&self, key: &[u8]) -> Result<bool> {
        let st = read(&self.state);
        FileStore::check_open(&st)?;
        Ok(st.index.contains_key(key))
    }

    fn raw_range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let st = read(&self.state);
        FileStore::check_open(&st)?;
        st.index
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(max)
            .map(|(k, loc)| Ok((k.to_vec(), st.read_value(k, *loc)?)))
            .collect()
    }

    fn raw_apply(&self, ops: Vec<RawOp>) -> Result<()> {
        let mut guard = write(&self.state);
        let st = &mut *guard;
        FileStore::check_open(st)?;
        let mut buf = std::mem::take(&mut st.scratch);
        format::begin_record(&mut buf);
        let offsets: Vec<Option<usize>> = ops.iter().map(|op| format::push_op(&mut buf, op)).collect();
        format::finish_record(&mut buf);
        let appended = self.append_record(st, &buf);
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
        st.scratch = buf;
        let (seg, rec_off) = appended?;
        for (op, voff) in ops.iter().zip(offsets) {
            match (op, voff) {
                (RawOp::Put(k, v), Some(voff)) => {
                    let loc = Loc { seg, off: (rec_off + voff as u64) as u32, len: v.len() as u32 };
                    st.apply_put(k, loc);
                }
                (RawOp::Delete(k), _) => st.apply_delete(k),
                (RawOp::DeleteRange(s, e), _) => st.apply_delete_range(s, e),
                _ => {}
            }
        }
        self.gc.note_write();
        if self.needs_compaction(st)
            && let Err(e) = self.compact_locked(st)
        {
            st.auto_compaction = false;
            tracing::error!(dir = %self.dir.display(), error = %e, "compaction failed; automatic compaction disabled");
        }
        Ok(())
    }

    fn engine_limits(&self) -> Limits {
        Limits::default()
    }

    fn engine_read_only(&self) -> bool {
        self.read_only
    }
}

impl Store for FileStore {
    engine_store_methods!();

    fn size_on_disk(&self) -> Option<u64> {
        Some(self.stats().total_bytes)
    }

    fn put_blob(&self, name: &[u8], data: &mut dyn Read) -> Result<u64> {
        engine::check_writable(self)?;
        engine::check_blob_name(&self.engine_limits(), name)?;
        FileStore::check_open(&read(&self.state))?;
        self.blobs.put(name, data)
    }

    fn open_blob(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>> {
        engine::check_blob_name(&self.engine_limits(), name)?;
        FileStore::check_open(&read(&self.state))?;
        self.blobs.open(name)
    }

    fn delete_blob(&self, name: &[u8]) -> Result<bool> {
        engine::check_writable(self)?;
        engine::check_blob_name(&self.engine_limits(), name)?;
        FileStore::check_open(&read(&self.state))?;
        self.blobs.delete(name)
    }

    fn sync(&self) -> Result<()> {
        FileStore::check_open(&read(&self.state))?;
        if self.read_only {
            return Ok(()); // nothing was written
        }
        self.gc.sync(|| {
            let (file, path) = {
                let st = read(&self.state);
                FileStore::check_open(&st)?;
                let seg = &st.segments[&st.active];
                (seg.file.clone(), seg.path.clone())
            };
            file.sync_data().map_err(|e| StoreError::io("fdatasync segment", path, e))
        })
    }

    fn close(&self) -> Result<()> {
        let _g = lock(&self.writer);
        let result = {
            let st = read(&self.state);
            if st.closed {
                return Ok(());
            }
            if self.read_only {
                Ok(()) // nothing was written
            } else {
                let seg = &st.segments[&st.active];
                seg.file.sync_data().map_err(|e| StoreError::io("fdatasync segment", &seg.path, e))
            }
        };
        {
            let mut st = write(&self.state);
            st.closed = true;
            st.segments.clear();
            st.index = BTreeMap::new();
        }
        lock(&self.dir_lock).take();
        result
    }
}
