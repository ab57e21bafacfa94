//! `micdrop serve` in a child process, for the CLI's tests. Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// A `micdrop serve` started by [`spawn_serve`], up to its banner.
pub struct Started {
    pub child: Child,
    /// The address of the banner (`web page http://ADDR/`).
    pub addr: SocketAddr,
    /// Its stderr lines after the banner, as they come (until the pipe's end of file).
    pub lines: Receiver<String>,
    /// The lines up to the banner, included.
    pub seen: Vec<String>,
}

/// Spawns `cmd` (a `micdrop serve ...`) with its stderr piped and waits up to `timeout` for the
/// banner, which gives the address; without one, kills it and panics with what it logged.
pub fn spawn_serve(cmd: &mut Command, timeout: Duration) -> Started {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let Ok(line) = lines.recv_timeout(timeout) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no server banner; server log:\n{}", seen.join("\n"));
        };
        seen.push(line.clone());
        if let Some(rest) = line.split("web page http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    Started {
        child,
        addr,
        lines,
        seen,
    }
}
