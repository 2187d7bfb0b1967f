//! Blob files shared by the durable backends.
//!
//! A blob `name` lives in `<dir>/blobs/b-<hex(name)>`. The file is the raw data followed by a 16-byte
//! trailer: magic `RPKB` (4 bytes), CRC-32 of the data (u32 LE), data length (u64 LE). A write streams into
//! `tmp-<pid>-<n>`, fsyncs it, renames it over the final name and fsyncs the directory, so a blob is either
//! the old or the new version after a crash, and durable when `put` returns.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, StoreError};
use crate::keys::hex;
use crate::lock::{ensure_dir, sync_dir};

const MAGIC: &[u8; 4] = b"RPKB";
const TRAILER: u64 = 16;
const CHUNK: usize = 64 * 1024;

/// A directory of checksummed blob files.
#[derive(Debug)]
pub(crate) struct BlobDir {
    dir: PathBuf,
    tmp_counter: AtomicU64,
}

impl BlobDir {
    /// Opens (creating) `<root>/blobs` and removes temporary files left by a crash.
    pub(crate) fn open_dir(root: &Path) -> Result<BlobDir> {
        let dir = root.join("blobs");
        ensure_dir(&dir)?;
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io("list blobs", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list blobs", &dir, e))?;
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| StoreError::io("remove stale blob temp file", &p, e))?;
            }
        }
        Ok(BlobDir { dir, tmp_counter: AtomicU64::new(0) })
    }

    /// `<root>/blobs` for a read-only handle: creates and removes nothing (a missing directory simply
    /// holds no blobs, and leftover temp files are left for the next writer to remove).
    pub(crate) fn open_read_only(root: &Path) -> BlobDir {
        BlobDir { dir: root.join("blobs"), tmp_counter: AtomicU64::new(0) }
    }

    fn path_of(&self, name: &[u8]) -> PathBuf {
        self.dir.join(format!("b-{}", hex(name)))
    }

    /// Streams `data` into the blob `name`; durable on return.
    pub(crate) fn put(&self, name: &[u8], data: &mut dyn Read) -> Result<u64> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("tmp-{}-{n}", std::process::id()));
        let result = self.write_tmp(&tmp, data).and_then(|len| {
            let target = self.path_of(name);
            std::fs::rename(&tmp, &target).map_err(|e| StoreError::io("rename blob", &target, e))?;
            sync_dir(&self.dir)?;
            Ok(len)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_tmp(&self, tmp: &Path, data: &mut dyn Read) -> Result<u64> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| StoreError::io("create blob temp file", tmp, e))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut len = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read blob source", tmp, e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| StoreError::io("write blob", tmp, e))?;
            len += n as u64;
        }
        let mut trailer = Vec::with_capacity(TRAILER as usize);
        trailer.extend_from_slice(MAGIC);
        trailer.extend_from_slice(&hasher.finalize().to_le_bytes());
        trailer.extend_from_slice(&len.to_le_bytes());
        file.write_all(&trailer).map_err(|e| StoreError::io("write blob", tmp, e))?;
        file.sync_all().map_err(|e| StoreError::io("fsync blob", tmp, e))?;
        Ok(len)
    }

    /// Opens the blob `name` for a streaming, checksum-verifying read.
    pub(crate) fn open(&self, name: &[u8]) -> Result<Option<Box<dyn Read + Send>>> {
        let path = self.path_of(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open blob", &path, e)),
        };
        let size = file.metadata().map_err(|e| StoreError::io("stat blob", &path, e))?.len();
        let corrupt = |reason: String| StoreError::Corruption {
            file: path.clone(),
            offset: size.saturating_sub(TRAILER),
            key: Some(name.to_vec()),
            reason,
        };
        if size < TRAILER {
            return Err(corrupt(format!("blob file has {size} bytes, shorter than its trailer")));
        }
        let mut trailer = [0u8; TRAILER as usize];
        file.read_exact_at(&mut trailer, size - TRAILER)
            .map_err(|e| StoreError::io("read blob", &path, e))?;
        let len = u64::from_le_bytes(trailer[8..16].try_into().unwrap_or_default());
        if &trailer[..4] != MAGIC || len != size - TRAILER {
            return Err(corrupt("blob trailer is invalid".into()));
        }
        let crc = u32::from_le_bytes(trailer[4..8].try_into().unwrap_or_default());
        Ok(Some(Box::new(BlobReader {
            inner: BufReader::with_capacity(CHUNK, file).take(len),
            hasher: crc32fast::Hasher::new(),
            expected: crc,
            path,
            checked: false,
        })))
    }

    /// Removes the blob `name`; durable on return.
    pub(crate) fn delete(&self, name: &[u8]) -> Result<bool> {
        let path = self.path_of(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove blob", &path, e)),
        }
    }
}

/// Streams a blob's data and checks its CRC when the end is reached.
#[derive(Debug)]
struct BlobReader {
    inner: io::Take<BufReader<File>>,
    hasher: crc32fast::Hasher,
    expected: u32,
    path: PathBuf,
    checked: bool,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.checked {
            if self.inner.limit() > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob {} ended early", self.path.display()),
                ));
            }
            self.checked = true;
            let actual = self.hasher.clone().finalize();
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} failed its checksum", self.path.display()),
                ));
            }
        }
        Ok(n)
    }
}
