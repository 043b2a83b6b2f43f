//! Archive targets (a directory, or S3-compatible object storage, both through `object_store`), the objects
//! retention writes to them and their manifests.
//!
//! Layout, under the target's root (the directory, or the bucket's `prefix`):
//!
//! ```text
//! <dataset>/<YYYY>/<MM>/<DD>/<part>.jsonl.gz         one JSON object per line (gzip)
//! <dataset>/<YYYY>/<MM>/<DD>/<part>.manifest.json    what the object holds, written once it is verified
//! ```
//!
//! `part` counts from `0000` within a UTC day: a day is archived in several parts when it holds more than
//! `rows_per_object` rows, or when retention reaches into a day that is not over yet (ages shorter than a day).
//! Names are deterministic, so a part written again after a crash replaces the unfinished one.

use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::settings::ArchiveSettings;
use crate::clock::ClockError;

/// The archive format, written in every manifest.
pub const FORMAT: &str = "jsonl+gzip";
/// Compressed bytes kept in memory before they are handed to the upload.
const FLUSH_BYTES: usize = 1 << 20;
/// Upload parts (S3 wants at least 5 MiB per part but the last).
const UPLOAD_PART_BYTES: usize = 8 << 20;
/// The longest line a reader accepts (a row with a very large payload is still far below).
const MAX_LINE_BYTES: usize = 64 << 20;
/// The most manifests one listing reads.
const MAX_MANIFESTS: usize = 100_000;

fn archive_error(context: &str, error: impl std::fmt::Display) -> ClockError {
    ClockError::Archive(format!("{context}: {error}"))
}

/// What one archive object holds. Written next to the object, only after the object was read back and its
/// checksum and row count verified: an object without a manifest is unfinished, and is written again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub dataset: String,
    pub day: NaiveDate,
    pub part: u32,
    /// The object's name under the target's root.
    pub object: String,
    pub rows: u64,
    /// The range of the data set's time column the object covers: `[from, to)`. Every row of the data set in
    /// that range is in the object (retention removes exactly that range once the manifest is written).
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The first and last row's times.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// Size and SHA-256 (hex) of the compressed object.
    pub bytes: u64,
    pub sha256: String,
    pub schema_version: u32,
    pub format: String,
    pub created_at: DateTime<Utc>,
}

/// Where archives go.
#[derive(Clone)]
pub struct ArchiveTarget {
    store: Arc<dyn ObjectStore>,
    root: Option<Path>,
    /// The directory of a local target: its files are synced to disk before rows are removed (`object_store`
    /// renames a finished file into place but does not sync it, so a power loss could lose it).
    local: Option<std::path::PathBuf>,
    description: String,
}

impl std::fmt::Debug for ArchiveTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl ArchiveTarget {
    /// The target the settings name: S3 when `s3` is set, else the directory (created if missing).
    pub fn from_settings(settings: &ArchiveSettings) -> Result<Self, ClockError> {
        if let Some(s3) = &settings.s3 {
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_allow_http(s3.allow_http);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            let store = builder
                .build()
                .map_err(|e| archive_error("clock.retention.archive.s3", e))?;
            let prefix = s3.prefix.trim_matches('/');
            return Ok(Self {
                store: Arc::new(store),
                root: (!prefix.is_empty()).then(|| Path::from(prefix)),
                local: None,
                description: format!("s3://{}/{prefix}", s3.bucket),
            });
        }
        let dir = &settings.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| archive_error(&format!("cannot create {}", dir.display()), e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| archive_error(&format!("{}", dir.display()), e))?;
        Ok(Self {
            store: Arc::new(store),
            root: None,
            local: Some(dir.clone()),
            description: dir.display().to_string(),
        })
    }

    /// A target on any store (tests use an in-memory one).
    pub fn on_store(store: Arc<dyn ObjectStore>, description: &str) -> Self {
        Self {
            store,
            root: None,
            local: None,
            description: description.to_string(),
        }
    }

    fn path(&self, relative: &str) -> Path {
        match &self.root {
            Some(root) => Path::from(format!("{root}/{relative}")),
            None => Path::from(relative),
        }
    }

    fn day_dir(dataset: &str, day: NaiveDate) -> String {
        format!("{dataset}/{}", day.format("%Y/%m/%d"))
    }

    /// The object name of a part, under the root.
    pub fn object_name(dataset: &str, day: NaiveDate, part: u32) -> String {
        format!("{}/{part:04}.jsonl.gz", Self::day_dir(dataset, day))
    }

    fn manifest_name(dataset: &str, day: NaiveDate, part: u32) -> String {
        format!("{}/{part:04}.manifest.json", Self::day_dir(dataset, day))
    }

    /// Starts writing a part (replacing an unfinished one of the same name).
    pub async fn writer(
        &self,
        dataset: &str,
        day: NaiveDate,
        part: u32,
    ) -> Result<PartWriter, ClockError> {
        let object = Self::object_name(dataset, day, part);
        let upload = self
            .store
            .put_multipart(&self.path(&object))
            .await
            .map_err(|e| archive_error(&object, e))?;
        Ok(PartWriter {
            object,
            upload: WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES),
            // The fastest level: JSON Lines of similar rows still compress several times over, and compression
            // is most of the pass's CPU, which the queue needs more.
            encoder: GzEncoder::new(Vec::with_capacity(FLUSH_BYTES), Compression::fast()),
            hasher: Sha256::new(),
            bytes: 0,
            rows: 0,
        })
    }

    /// Reads the object back: its size, SHA-256 and line count must be what was written.
    pub async fn verify(&self, object: &str, expected: &Written) -> Result<(), ClockError> {
        let mut stream = self
            .store
            .get(&self.path(object))
            .await
            .map_err(|e| archive_error(object, e))?
            .into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut decoder = GzDecoder::new(LineCounter::default());
        let unreadable = |e: std::io::Error| {
            ClockError::Archive(format!("{object} does not read back as written: {e}"))
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| archive_error(object, e))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            decoder.write_all(&chunk).map_err(unreadable)?;
        }
        let lines = decoder.finish().map_err(unreadable)?.lines;
        let sha256 = hex(&hasher.finalize());
        if bytes != expected.bytes || sha256 != expected.sha256 || lines != expected.rows {
            return Err(ClockError::Archive(format!(
                "{object} does not read back as written: {bytes} bytes, sha256 {sha256}, {lines} rows; \
                 expected {} bytes, sha256 {}, {} rows",
                expected.bytes, expected.sha256, expected.rows
            )));
        }
        Ok(())
    }

    /// Syncs a local target's file and its directory to disk (S3 acknowledges a write once it is durable).
    pub async fn sync(&self, name: &str) -> Result<(), ClockError> {
        let Some(dir) = &self.local else {
            return Ok(());
        };
        let file = dir.join(name);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(parent) => std::fs::File::open(parent)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| archive_error(name, e))?
        .map_err(|e| archive_error(name, e))
    }

    /// Verifies the object a manifest describes.
    pub async fn verify_manifest(&self, manifest: &Manifest) -> Result<(), ClockError> {
        self.verify(&manifest.object, &manifest.written()).await
    }

    /// Writes a part's manifest (one small object, written whole or not at all).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), ClockError> {
        let name = Self::manifest_name(&manifest.dataset, manifest.day, manifest.part);
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| archive_error(&name, e))?;
        self.store
            .put(&self.path(&name), PutPayload::from(body))
            .await
            .map_err(|e| archive_error(&name, e))?;
        self.sync(&name).await
    }

    /// The manifests of one data set's day, by part.
    pub async fn day_manifests(
        &self,
        dataset: &str,
        day: NaiveDate,
    ) -> Result<Vec<Manifest>, ClockError> {
        self.manifests_under(&Self::day_dir(dataset, day)).await
    }

    /// Every manifest of a data set (or of all of them), by data set, day and part.
    pub async fn manifests(&self, dataset: Option<&str>) -> Result<Vec<Manifest>, ClockError> {
        self.manifests_under(dataset.unwrap_or("")).await
    }

    async fn manifests_under(&self, relative: &str) -> Result<Vec<Manifest>, ClockError> {
        let prefix = if relative.is_empty() {
            self.root.clone()
        } else {
            Some(self.path(relative))
        };
        let mut names = Vec::new();
        let mut listing = self.store.list(prefix.as_ref());
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| archive_error(&self.description, e))?;
            if meta.location.as_ref().ends_with(".manifest.json") {
                if names.len() >= MAX_MANIFESTS {
                    return Err(ClockError::Archive(format!(
                        "more than {MAX_MANIFESTS} manifests under {}/{relative}: list one data set",
                        self.description
                    )));
                }
                names.push(meta.location);
            }
        }
        let mut manifests = Vec::with_capacity(names.len());
        for name in names {
            let body = self
                .store
                .get(&name)
                .await
                .map_err(|e| archive_error(name.as_ref(), e))?
                .bytes()
                .await
                .map_err(|e| archive_error(name.as_ref(), e))?;
            let manifest: Manifest =
                serde_json::from_slice(&body).map_err(|e| archive_error(name.as_ref(), e))?;
            manifests.push(manifest);
        }
        manifests.sort_by(|a, b| (&a.dataset, a.day, a.part).cmp(&(&b.dataset, b.day, b.part)));
        Ok(manifests)
    }

    /// Reads an object's lines, a batch at a time (for restore). Verify it first.
    pub async fn lines(&self, object: &str) -> Result<LineReader, ClockError> {
        let stream = self
            .store
            .get(&self.path(object))
            .await
            .map_err(|e| archive_error(object, e))?
            .into_stream();
        Ok(LineReader {
            object: object.to_string(),
            stream,
            decoder: Some(GzDecoder::new(LineSplitter::default())),
        })
    }
}

/// What a finished part holds, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn written(&self) -> Written {
        Written {
            rows: self.rows,
            bytes: self.bytes,
            sha256: self.sha256.clone(),
        }
    }
}

/// One part being written: lines are compressed as they come and uploaded a few MiB at a time, so memory stays
/// bounded however large the part.
pub struct PartWriter {
    object: String,
    upload: WriteMultipart,
    encoder: GzEncoder<Vec<u8>>,
    hasher: Sha256,
    bytes: u64,
    rows: u64,
}

impl PartWriter {
    pub fn object(&self) -> &str {
        &self.object
    }

    pub async fn write_line(&mut self, line: &str) -> Result<(), ClockError> {
        self.encoder
            .write_all(line.as_bytes())
            .and_then(|()| self.encoder.write_all(b"\n"))
            .map_err(|e| archive_error(&self.object, e))?;
        self.rows += 1;
        if self.encoder.get_ref().len() >= FLUSH_BYTES {
            let chunk = std::mem::take(self.encoder.get_mut());
            self.send(&chunk);
            self.upload
                .wait_for_capacity(2)
                .await
                .map_err(|e| archive_error(&self.object, e))?;
        }
        Ok(())
    }

    fn send(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        self.upload.write(chunk);
    }

    /// Completes the object (it appears whole, or not at all).
    pub async fn finish(mut self) -> Result<Written, ClockError> {
        let encoder = std::mem::replace(
            &mut self.encoder,
            GzEncoder::new(Vec::new(), Compression::none()),
        );
        let rest = encoder
            .finish()
            .map_err(|e| archive_error(&self.object, e))?;
        self.send(&rest);
        self.upload
            .finish()
            .await
            .map_err(|e| archive_error(&self.object, e))?;
        Ok(Written {
            rows: self.rows,
            bytes: self.bytes,
            sha256: hex(&self.hasher.finalize()),
        })
    }

    /// Gives up the part (a failed write): nothing appears under its name.
    pub async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(object = %self.object, %error, "could not abort an unfinished archive upload");
        }
    }
}

/// An object's lines, decompressed as they are read.
pub struct LineReader {
    object: String,
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    decoder: Option<GzDecoder<LineSplitter>>,
}

impl LineReader {
    /// The next lines (at least one), or `None` at the end.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<String>>, ClockError> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(None);
            };
            let ready = decoder.get_mut().take_lines();
            if !ready.is_empty() {
                return Ok(Some(ready));
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| archive_error(&self.object, e))?;
                    decoder
                        .write_all(&chunk)
                        .map_err(|e| archive_error(&self.object, e))?;
                }
                None => {
                    let Some(decoder) = self.decoder.take() else {
                        return Ok(None);
                    };
                    let mut splitter = decoder
                        .finish()
                        .map_err(|e| archive_error(&self.object, e))?;
                    let mut last = splitter.take_lines();
                    if !splitter.partial.is_empty() {
                        last.push(
                            String::from_utf8(std::mem::take(&mut splitter.partial))
                                .map_err(|e| archive_error(&self.object, e))?,
                        );
                    }
                    return Ok((!last.is_empty()).then_some(last));
                }
            }
        }
    }
}

/// Counts the lines written through it.
#[derive(Default)]
struct LineCounter {
    lines: u64,
}

impl Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Splits what is written through it into lines.
#[derive(Default)]
struct LineSplitter {
    lines: Vec<String>,
    partial: Vec<u8>,
}

impl LineSplitter {
    fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }
}

impl Write for LineSplitter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..at]);
            let line = String::from_utf8(std::mem::take(&mut self.partial))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            self.lines.push(line);
            rest = &rest[at + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
