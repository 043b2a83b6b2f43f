//! How a herald process stops on SIGTERM or SIGINT, even when a handler has wedged its async runtime.
//!
//! Signals are taken by a plain OS thread that waits for them with `sigwait`, not by the async runtime: a handler
//! stuck in a CPU loop or a blocking call on every runtime thread would leave a runtime-based signal handler
//! unheard. The contract:
//! 1. [`watch`] runs first thing in `main`, before any other thread exists, so that every thread inherits the
//!    blocked signals and only the watcher receives them. (Child processes start with a clean mask: the
//!    standard library resets it when it spawns them.)
//! 2. A role that shuts down gracefully asks for a token with [`on_signal`], naming its grace period.
//! 3. On the first signal the token is cancelled and the role begins its graceful shutdown. If the process is
//!    still running [`HARD_MARGIN`] after the grace period (its runtime is wedged), or a second signal arrives,
//!    the process exits at once with status 1, after whatever was registered with [`before_forced_exit`]. Jobs
//!    it still held are rescued by the rest of the fleet.
//! 4. A signal before any role asked for a token (a migration, a CLI command) ends the process at once, as the
//!    default action would have (after the [`before_forced_exit`] cleanup, if any).

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long past its grace period a process that has not exited is given before it is ended: enough for a worker
/// to write its last acks and leave the registry against a slow database (each statement is bounded by
/// `queue::lease::CALL_DEADLINE`, 15 s). Reached by a wedged runtime, or a database gone for that long (jobs not
/// settled then run again after their lease, as after a crash).
pub const HARD_MARGIN: Duration = Duration::from_secs(40);

/// The token to cancel and the grace period of the role that asked for it.
static GRACEFUL: Mutex<Option<(CancellationToken, Duration)>> = Mutex::new(None);

/// What must happen even when the process is ended without a graceful shutdown.
type LastRites = Box<dyn Fn() + Send>;
static BEFORE_FORCED_EXIT: Mutex<Vec<LastRites>> = Mutex::new(Vec::new());

/// Runs `rites` before the process is ended at a second signal or past its hard deadline (`herald up` stops its
/// private PostgreSQL this way, which would otherwise outlive it).
pub fn before_forced_exit(rites: impl Fn() + Send + 'static) {
    BEFORE_FORCED_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(rites));
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after it) and starts the thread that
/// waits for them. Call it before anything else in `main`, before the async runtime (or any other thread) starts:
/// a thread started earlier does not block the signals, and one delivered to it ends the process at once. Calling
/// it again does nothing.
pub fn watch() {
    // Once per process: a second watcher thread would take the second signal as a first one.
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(start_watching);
}

fn start_watching() {
    let set = termination_signals();
    // SAFETY: plain libc calls on a sigset we own; blocking signals has no memory-safety effect.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        tracing::warn!("cannot block SIGINT/SIGTERM; signals will end the process at once");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || wait_for_signals(set));
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the signal thread; unblocking SIGINT/SIGTERM");
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// A token cancelled by the first SIGINT or SIGTERM; the process is ended if it has not exited `grace` +
/// [`HARD_MARGIN`] after it. Called again, the last caller's grace applies and the same token is returned.
pub fn on_signal(grace: Duration) -> CancellationToken {
    let mut graceful = GRACEFUL.lock().unwrap_or_else(|p| p.into_inner());
    let token = match graceful.as_ref() {
        Some((token, _)) => token.clone(),
        None => CancellationToken::new(),
    };
    *graceful = Some((token.clone(), grace));
    token
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn wait_for_signals(set: libc::sigset_t) {
    let first = wait(&set, None);
    let graceful = GRACEFUL.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some((token, grace)) = graceful else {
        last_rites();
        std::process::exit(128 + first);
    };
    tracing::info!(
        signal = first,
        ?grace,
        "shutdown signal received; finishing in-flight jobs"
    );
    token.cancel();
    let limit = grace + HARD_MARGIN;
    match wait(&set, Some(limit)) {
        0 => tracing::error!(
            ?limit,
            "the process did not stop within its grace period (a handler holds every thread); exiting now"
        ),
        second => tracing::warn!(
            signal = second,
            "second shutdown signal; exiting without waiting for running jobs"
        ),
    }
    last_rites();
    std::process::exit(1);
}

/// Runs what [`before_forced_exit`] registered, for at most [`LAST_RITES_LIMIT`]: a forced exit must not hang on
/// them (signals are blocked in every thread, so nothing else would end the process).
fn last_rites() {
    let (done, finished) = std::sync::mpsc::channel();
    let ran = std::thread::Builder::new().spawn(move || {
        for rites in BEFORE_FORCED_EXIT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            rites();
        }
        let _ = done.send(());
    });
    if ran.is_ok() && finished.recv_timeout(LAST_RITES_LIMIT).is_err() {
        tracing::error!(limit = ?LAST_RITES_LIMIT, "cleanup before exit did not finish in time; exiting anyway");
    }
}

/// How long the cleanup before a forced exit may take.
const LAST_RITES_LIMIT: Duration = Duration::from_secs(10);

/// Waits for one of `set`, at most `limit`; returns the signal, or 0 when the time ran out.
fn wait(set: &libc::sigset_t, limit: Option<Duration>) -> i32 {
    let deadline = limit.map(|limit| std::time::Instant::now() + limit);
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let received = match remaining {
            None => {
                let mut signal = 0;
                // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
                match unsafe { libc::sigwait(set, &mut signal) } {
                    0 => signal,
                    _ => -1,
                }
            }
            Some(limit) => {
                let timeout = libc::timespec {
                    tv_sec: limit.as_secs() as libc::time_t,
                    tv_nsec: limit.subsec_nanos() as libc::c_long,
                };
                // SAFETY: as above; a null siginfo pointer is allowed.
                let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
                if signal < 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
                {
                    return 0;
                }
                signal
            }
        };
        if received > 0 {
            return received;
        }
        // Interrupted (EINTR): wait again for what is left of the limit.
    }
}
