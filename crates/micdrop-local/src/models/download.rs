//! Resumable, verified downloads.
//!
//! A file is fetched into `NAME.part` next to its destination. An interrupted download resumes
//! with an HTTP `Range` request (a server that ignores it sends the whole file again, which is
//! detected by its `200` status). The digest covers the whole file, including the part fetched
//! earlier; a file whose digest differs from the published one is deleted and reported, never
//! installed. Only a verified file is renamed to its destination.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::LocalError;

/// How long `pull` waits for a connection to a source before trying the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest silence allowed in the middle of a response body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The expected digest of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256, lowercase hex.
    Sha256(String),
    /// SHA-1, lowercase hex (the digests whisper.cpp publishes for its ggml files).
    Sha1(String),
    /// The SHA-256 the server advertises for the file (Hugging Face's `X-Linked-Etag` for
    /// files stored with Git LFS). A response without one is refused.
    ServerSha256,
    /// No digest is published (a small configuration file next to a verified model): the file
    /// is installed and its SHA-256 recorded in the model's manifest.
    Unpublished,
}

/// Receives the progress of downloads (an `indicatif` bar in the CLI, a recorder in tests).
pub trait Progress: Send + Sync {
    /// A file starts: `total` bytes if known, `done` of them already on disk (resumed).
    fn start(&self, file: &str, total: Option<u64>, done: u64);
    /// `bytes` more were received.
    fn advance(&self, bytes: u64);
    /// The file is complete and verified.
    fn finish(&self, file: &str);
    /// A message for the user (a source that failed, a fallback, a conversion step).
    fn note(&self, message: &str);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// An HTTP client for model downloads: rustls, a connect timeout, no overall timeout (files are
/// large) but a read timeout so that a stalled server does not hang `pull`.
///
/// Besides the built-in web roots, it trusts the system's CA bundle (`SSL_CERT_FILE`, else
/// `/etc/ssl/certs/ca-certificates.crt`), so that pulls work through a corporate TLS proxy or a
/// private package index with its own CA.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, LocalError> {
    let mut builder = reqwest::Client::builder();
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    if let Ok(pem) = std::fs::read(&bundle) {
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) => {
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            Err(e) => {
                tracing::warn!(bundle = %bundle.display(), error = %e, "unreadable CA bundle")
            }
        }
    }
    builder
        .connect_timeout(connect_timeout)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("micdrop/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LocalError::Download {
            url: String::new(),
            reason: e.to_string(),
        })
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl Hasher {
    fn for_checksum(c: &Checksum) -> Self {
        match c {
            Checksum::Sha1(_) => Hasher::Sha1(sha1::Sha1::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
        }
    }
}

/// The `.part` file of a destination.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Downloads `url` to `dest` (resuming `dest.part` if present), verifies `checksum`, then renames
/// it into place. Returns the SHA-256 of the file (whatever the published checksum's kind).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    checksum: &Checksum,
    progress: &dyn Progress,
) -> Result<String, LocalError> {
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let part = part_path(dest);
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| LocalError::io(dir, e))?;
    }
    let have = match tokio::fs::metadata(&part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let fail = |reason: String| LocalError::Download {
        url: url.to_string(),
        reason,
    };
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| fail(error_chain(&e)))?;
    let status = response.status();
    let resumed = match status.as_u16() {
        206 if have > 0 => true,
        200 => false,
        // The part is complete already (or larger than the file): start over.
        416 => {
            remove_quietly(&part).await;
            return Box::pin(download(client, url, dest, checksum, progress)).await;
        }
        code => return Err(fail(format!("HTTP {code}"))),
    };
    let expected = match checksum {
        Checksum::Sha256(h) | Checksum::Sha1(h) => Some(h.to_ascii_lowercase()),
        Checksum::ServerSha256 => Some(server_sha256(response.headers()).ok_or_else(|| {
            fail("the server advertised no SHA-256 for the file (X-Linked-Etag)".into())
        })?),
        Checksum::Unpublished => None,
    };
    let mut hasher = Hasher::for_checksum(checksum);
    let mut sha256 = sha2::Sha256::new();
    let mut file = if resumed {
        // Hash what is already on disk, then append.
        let mut f = tokio::fs::File::open(&part)
            .await
            .map_err(|e| LocalError::io(&part, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| LocalError::io(&part, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sha256.update(&buf[..n]);
        }
        tokio::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .await
            .map_err(|e| LocalError::io(&part, e))?
    } else {
        tokio::fs::File::create(&part)
            .await
            .map_err(|e| LocalError::io(&part, e))?
    };
    let done = if resumed { have } else { 0 };
    let total = response.content_length().map(|len| len + done);
    progress.start(&file_name, total, done);
    let mut body = response.bytes_stream();
    let mut received = done;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| fail(error_chain(&e)))?;
        hasher.update(&chunk);
        sha256.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| LocalError::io(&part, e))?;
        received += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    file.flush().await.map_err(|e| LocalError::io(&part, e))?;
    drop(file);
    if let Some(total) = total
        && received < total
    {
        return Err(fail(format!(
            "connection closed after {received} of {total} bytes"
        )));
    }
    let actual = hasher.hex();
    if let Some(expected) = expected
        && actual != expected
    {
        remove_quietly(&part).await;
        return Err(LocalError::Checksum {
            file: file_name,
            algorithm: match checksum {
                Checksum::Sha1(_) => "sha1",
                _ => "sha256",
            },
            expected,
            actual,
        });
    }
    tokio::fs::rename(&part, dest)
        .await
        .map_err(|e| LocalError::io(dest, e))?;
    progress.finish(&file_name);
    Ok(hex::encode(sha256.finalize()))
}

/// The SHA-256 a server advertises for a file stored with Git LFS (`X-Linked-Etag: "<hex>"`).
fn server_sha256(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let v = headers.get("x-linked-etag")?.to_str().ok()?;
    let v = v
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

/// The SHA-256 of a file on disk.
pub async fn sha256_file(path: &Path) -> Result<String, LocalError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| LocalError::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| LocalError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a partial download");
    }
}

/// An error with its causes (reqwest hides the useful part, e.g. "connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}
