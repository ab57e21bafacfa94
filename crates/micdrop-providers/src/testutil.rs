//! A scripted raw HTTP/1.1 server on loopback for unit tests (no framework: each connection
//! plays one scripted reply, byte for byte).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One step of a scripted reply.
#[derive(Debug, Clone)]
pub enum Part {
    /// Write these bytes.
    Write(String),
    /// Wait.
    Sleep(Duration),
    /// Wait until the client closes the connection, then count it in `closed_by_client`.
    AwaitClientClose,
}

/// A scripted server.
#[derive(Debug, Clone)]
pub struct RawServer {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Requests received (head and body).
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Connections the client closed while the server waited ([`Part::AwaitClientClose`]).
    pub closed_by_client: Arc<AtomicUsize>,
}

impl RawServer {
    /// Starts a server answering connection `n` with `replies[n]` (the last reply repeats).
    pub async fn start(replies: Vec<Vec<Part>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(Mutex::new(VecDeque::from(replies)));
        let (r2, c2) = (requests.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let reply = {
                    let mut q = queue.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap_or_default()
                    }
                };
                let (r3, c3) = (r2.clone(), c2.clone());
                tokio::spawn(async move {
                    let req = read_request(&mut sock).await;
                    r3.lock().unwrap().push(req);
                    for part in reply {
                        match part {
                            Part::Write(s) => {
                                if sock.write_all(s.as_bytes()).await.is_err() {
                                    return;
                                }
                                let _ = sock.flush().await;
                            }
                            Part::Sleep(d) => tokio::time::sleep(d).await,
                            Part::AwaitClientClose => {
                                let mut buf = [0u8; 1024];
                                loop {
                                    match sock.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(_) => {}
                                    }
                                }
                                c3.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            closed_by_client: closed,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of requests received.
    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            return String::from_utf8_lossy(&buf).to_string();
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete HTTP response with a JSON body.
pub fn json_response(status: u16, body: &str) -> Part {
    Part::Write(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// The head of an SSE response (the body follows, connection closes at the end).
pub fn sse_head() -> Part {
    Part::Write(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".into(),
    )
}

/// SSE events `data: <line>\n\n` for each line.
pub fn sse_events(lines: &[&str]) -> Part {
    Part::Write(lines.iter().map(|l| format!("data: {l}\n\n")).collect())
}
