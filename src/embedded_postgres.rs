//! The private PostgreSQL cluster `herald up` starts when no `DATABASE_URL` is set, so the whole fleet runs on a
//! fresh machine with nothing but the PostgreSQL server package installed.
//!
//! It uses the machine's own `initdb` and `pg_ctl` (from PATH or `/usr/lib/postgresql/<version>/bin`), keeps its
//! data under the configured directory (`.herald/pg`, ignored by git), listens on a free port on 127.0.0.1 only,
//! and writes that port to `<dir>/port` so other `herald` commands in the same directory find it.
//!
//! Ownership: the `herald up` that owns the cluster holds an exclusive lock on `<dir>/owner.lock` for as long as it
//! runs, and stops the cluster when it ends. The kernel drops the lock when that process dies, even by `kill -9`,
//! so a cluster found running with the lock free was left behind by a dead `herald up`: the next one says so and
//! takes it over (it stops it on exit). A cluster whose lock is held belongs to a live `herald up`, which the new
//! one joins without owning.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under /usr/lib/postgresql/*/bin; \
         install them (Debian/Ubuntu: `apt-get install postgresql`) or set DATABASE_URL"
    )]
    BinariesMissing,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("io error under {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `[embedded_postgres]`: where `herald up` keeps its private cluster.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedPostgresSettings {
    pub dir: PathBuf,
}

/// A running private cluster. Call [`EmbeddedPostgres::stop`] to shut it down.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    pub port: u16,
    /// Whether this process owns it (started it, or took over one a dead `herald up` left) and so stops it.
    pub started_here: bool,
    /// The owner's lock, held while this value lives (see the module docs).
    owner_lock: Option<std::fs::File>,
}

impl EmbeddedPostgres {
    /// Starts the cluster under `dir` (creating it on first use), or attaches to it if it is already running.
    pub fn start(dir: &Path) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesMissing)?;
        let io = |source| EmbeddedError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = dir.canonicalize().map_err(io)?;
        let data_dir = dir.join("data");
        let run_as = unprivileged_user_if_root();
        let mut cluster = Self {
            dir: dir.clone(),
            data_dir,
            bin_dir,
            run_as,
            port: 0,
            started_here: false,
            owner_lock: None,
        };
        // A lock held with no cluster running: its owner is starting it (or has just stopped it and is exiting).
        // Wait for either to finish rather than fail at once.
        let deadline = std::time::Instant::now() + OWNER_WAIT;
        let mut owner_lock = take_owner_lock(&dir).map_err(io)?;
        while owner_lock.is_none()
            && !(read_port(&dir).is_some() && cluster.is_running())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(250));
            owner_lock = take_owner_lock(&dir).map_err(io)?;
        }
        if let Some(port) = read_port(&dir)
            && cluster.is_running()
        {
            cluster.port = port;
            match owner_lock {
                Some(lock) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        postmaster = %cluster.postmaster_pid().unwrap_or_default(),
                        "found the private PostgreSQL an earlier `herald up` left running (it ended without stopping \
                         it); taking it over: it stops when this process does"
                    );
                    cluster.owner_lock = Some(lock);
                    cluster.started_here = true;
                }
                None => tracing::info!(
                    dir = %dir.display(),
                    "another `herald up` in this directory runs the private PostgreSQL; joining it"
                ),
            }
            return Ok(cluster);
        }
        let Some(owner_lock) = owner_lock else {
            return Err(EmbeddedError::Command {
                step: "pg_ctl status",
                detail: format!(
                    "another `herald up` has owned {} for {}s without its PostgreSQL running; stop that process \
                     first",
                    dir.display(),
                    OWNER_WAIT.as_secs()
                ),
            });
        };
        cluster.owner_lock = Some(owner_lock);
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.init(&dir)?;
        }
        cluster.port = free_port().map_err(io)?;
        cluster.pg_ctl_start()?;
        std::fs::write(dir.join("port"), cluster.port.to_string()).map_err(io)?;
        cluster.started_here = true;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Fast shutdown (running transactions are rolled back; committed data is safe). The port file goes too, so
    /// other commands say there is no database instead of failing to connect.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run(
            "pg_ctl stop",
            "pg_ctl",
            &["stop", "-m", "fast", "-w", "-D", &data],
        )?;
        let _ = std::fs::remove_file(self.dir.join("port"));
        Ok(())
    }

    /// Immediate restart, like a crash and recovery: used by the tests that prove jobs survive it.
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        self.run(
            "pg_ctl stop",
            "pg_ctl",
            &[
                "stop",
                "-m",
                "immediate",
                "-w",
                "-D",
                &self.data_dir.to_string_lossy(),
            ],
        )?;
        self.pg_ctl_start()
    }

    /// The server's process id, from the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next().map(|line| line.trim().to_string())
    }

    fn is_running(&self) -> bool {
        self.data_dir.join("postmaster.pid").exists()
            && self
                .run(
                    "pg_ctl status",
                    "pg_ctl",
                    &["status", "-D", &self.data_dir.to_string_lossy()],
                )
                .is_ok()
    }

    fn init(&self, dir: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.run_as {
            // initdb refuses to run as root; the cluster belongs to the unprivileged user.
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|source| {
                EmbeddedError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        }
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run(
            "initdb",
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let log = self
            .data_dir
            .join("server.log")
            .to_string_lossy()
            .into_owned();
        // TCP on loopback only, no Unix socket (its default directory may not be writable for us).
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
            self.port
        );
        self.run(
            "pg_ctl start",
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        )
    }

    fn run(&self, step: &'static str, program: &str, args: &[&str]) -> Result<(), EmbeddedError> {
        let mut command = Command::new(self.bin_dir.join(program));
        command.args(args);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let output = command.output().map_err(|e| EmbeddedError::Command {
            step,
            detail: e.to_string(),
        })?;
        if output.status.success() {
            Ok(())
        } else {
            let detail = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Err(EmbeddedError::Command {
                step,
                detail: detail.trim().to_string(),
            })
        }
    }
}

/// The URL of the private cluster under `dir`, if one was started there (and so wrote its port).
pub fn running_url(dir: &Path) -> Option<String> {
    read_port(dir).map(|port| format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn read_port(dir: &Path) -> Option<u16> {
    std::fs::read_to_string(dir.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The directory holding `initdb` and `pg_ctl`: PATH first, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// PostgreSQL will not run as root. When we are root, run it as the `postgres` user (or `nobody`).
fn unprivileged_user_if_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].iter().find_map(|name| {
        let name = std::ffi::CString::new(*name).ok()?;
        // SAFETY: getpwnam takes a valid C string; the returned record is read at once, before any other call.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            return None;
        }
        // SAFETY: non-null pointer to a static passwd record.
        let entry = unsafe { &*entry };
        Some((entry.pw_uid, entry.pw_gid))
    })
}

/// How long a `herald up` waits for another that owns the directory to start (or finish stopping) its cluster.
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes `<dir>/owner.lock` if no live process holds it: `Some(file)` (keep it open to keep the lock), or `None`
/// when another live `herald up` owns the cluster.
fn take_owner_lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("owner.lock"))?;
    // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        return Ok(Some(file));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(error)
    }
}
