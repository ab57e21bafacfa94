//! A throwaway PostgreSQL cluster for tests: Debian's `postgresql` binaries, `initdb` in a
//! temporary directory, `pg_ctl` on a free loopback port, one cluster per test process, stopped
//! and removed when the process exits (a watchdog process does it even after a panic or a
//! `kill -9`).
//!
//! Missing binaries are an error, never a skipped test: `scripts/deps` installs them.
//!
//! Autovacuum is off: an auto-analyze running during a test holds a snapshot, and `VACUUM`
//! keeps the rows that snapshot can still see (what the erasure tests check must not depend on
//! its timing).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian puts PostgreSQL's server binaries (any version: the newest is used).
const PG_LIB: &str = "/usr/lib/postgresql";

/// A running cluster.
#[derive(Debug)]
pub struct TempPostgres {
    port: u16,
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<TempPostgres, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("MICDROP_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB)
        .map_err(|_| {
            format!(
                "PostgreSQL server binaries not found in {PG_LIB}: install Debian's `postgresql` \
                 package (scripts/deps does), or set MICDROP_PG_BIN to the directory of initdb"
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| format!("no {PG_LIB}/*/bin/initdb: install Debian's `postgresql` package"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &Path, args: &[&str], as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl TempPostgres {
    /// The process's cluster, started on first use.
    pub fn shared() -> Result<&'static TempPostgres, String> {
        CLUSTER
            .get_or_init(TempPostgres::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn start() -> Result<TempPostgres, String> {
        let bin = bin_dir()?;
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("micdrop-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let data = dir.join("data");
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown the cluster directory to postgres",
            )?;
        }
        let data_s = data.display().to_string();
        let dir_s = dir.display().to_string();
        run(
            pg_command(
                &bin.join("initdb"),
                &[
                    "-D",
                    &data_s,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
                root,
            ),
            "initdb",
        )?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let opts = format!(
                "-p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c autovacuum=off"
            );
            let log = format!("{dir_s}/log");
            match run(
                pg_command(
                    &bin.join("pg_ctl"),
                    &[
                        "-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
                    ],
                    root,
                ),
                "pg_ctl start",
            ) {
                Ok(()) => {
                    let cluster = TempPostgres { port, dir };
                    cluster.watchdog(&bin, root)?;
                    return Ok(cluster);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Stops the cluster and removes its directory when this process is gone.
    fn watchdog(&self, bin: &Path, root: bool) -> Result<(), String> {
        let pid = std::process::id();
        let pg_ctl = bin.join("pg_ctl");
        let data = self.dir.join("data");
        let stop = if root {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} -m immediate stop",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {}",
            self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the cluster's watchdog: {e}"))?;
        Ok(())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of the `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a new empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<String, String> {
        use sqlx::Connection;
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .map_err(|e| e.to_string())?;
        // The name is ours (digits and letters): no injection.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}
