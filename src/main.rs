//! The `baton` command: parses arguments and calls one function per command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use baton::cause::Cause;
use baton::config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "An HTTP gateway that keeps 502s rare, harmless and understood"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Validate a config file: print every error as file:line:column and exit 1 if any.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "baton.toml")]
        config: PathBuf,
        /// Also resolve, connect to and health-check every upstream endpoint, print a
        /// table, and exit 1 if an upstream has no reachable endpoint.
        #[arg(long)]
        probe: bool,
    },
    /// Run a gateway in front of three built-in back-ends (steady, flaky, broken).
    Demo {
        /// Also drive a built-in load for this long (e.g. 20s), then print a summary and exit.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the admin server (status page, metrics) listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
    /// Explain a cause code (the `Baton-Error` header), or list them all.
    Explain {
        /// A cause code such as upstream-connect-refused.
        cause: Option<String>,
    },
}

fn main() -> ExitCode {
    keep_heap_top();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, probe } => check(&config, probe),
        Command::Demo {
            duration,
            listen,
            admin,
        } => demo(baton::demo::Options { listen, admin }, duration),
        Command::Explain { cause } => explain(cause.as_deref()),
    }
}

fn load(path: &Path) -> Option<config::Config> {
    match config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn check(path: &Path, probe: bool) -> ExitCode {
    match load(path) {
        Some(config) if probe => probe_endpoints(&config),
        Some(config) => {
            println!(
                "{}: ok ({} listener{}, {} route{}, {} upstream{})",
                path.display(),
                config.listeners.len(),
                plural(config.listeners.len()),
                config.routes.len(),
                plural(config.routes.len()),
                config.upstreams.len(),
                plural(config.upstreams.len()),
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn probe_endpoints(config: &config::Config) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let probes = runtime.block_on(baton::probe::probe(config));
    let (report, all_reachable) = baton::probe::report(config, &probes);
    print!("{report}");
    if all_reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Logs to stderr, coloured only on a terminal.
fn init_logging(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .init();
}

/// glibc gives the free top of its heap back to the kernel once 128 KiB are free there. A
/// proxy's heap rises and falls by more than that as requests come and go, so with that
/// default it can fall into shrinking and regrowing the heap all the time: a `brk` call and
/// a page fault for every page touched again, up to a few microseconds per request (seen as
/// 0.4 page faults per request under load). Free memory at the top is kept up to 64 MiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_heap_top() {
    const KEEP: libc::c_int = 64 << 20;
    // SAFETY: `mallopt` only sets an allocator parameter; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_heap_top() {}

/// The async runtime: one thread when baton may use one core (as `taskset` or a container's
/// CPU set decide), where a single-threaded scheduler does the same work for less; else one
/// worker per core.
fn runtime() -> Option<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln!("baton: cannot start the runtime: {err}");
            None
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn run(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    init_logging(config.log.level);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Before anything listens: a signal sent once baton is reachable must find its
        // handler, not the default action, which ends the process on the spot (requests in
        // flight cut, for SIGTERM; and for SIGHUP too).
        let signals = match Signals::new() {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!("cannot listen for signals: {err}");
                return ExitCode::FAILURE;
            }
        };
        let running = match baton::start(config).await {
            Ok(running) => running,
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::FAILURE;
            }
        };
        signals.serve(&running.gateway).await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn demo(options: baton::demo::Options, duration: Option<std::time::Duration>) -> ExitCode {
    init_logging(tracing::Level::WARN);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Installed before the demo listens, as for `baton run`; with a duration, Ctrl-C
        // keeps its default and ends the load at once.
        let signals = match duration {
            None => match Signals::new() {
                Ok(signals) => Some(signals),
                Err(err) => {
                    eprintln!("baton demo: cannot listen for signals: {err}");
                    return ExitCode::FAILURE;
                }
            },
            Some(_) => None,
        };
        let demo = match baton::demo::start(&options).await {
            Ok(demo) => demo,
            Err(err) => {
                eprintln!("baton demo: {err}");
                eprintln!("(another address: baton demo --listen 127.0.0.1:18080 --admin 127.0.0.1:19901)");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo.urls());
        match (duration, signals) {
            (Some(duration), _) => {
                println!("Sending requests for {}…", humantime::format_duration(duration));
                let summary = demo.load(duration).await;
                println!("{summary}");
            }
            (None, signals) => {
                println!("Stop with Ctrl-C.");
                if let Some(signals) = signals {
                    signals.serve(&demo.running.gateway).await;
                }
            }
        }
        demo.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The signals baton answers while it serves: SIGTERM and SIGINT stop it gracefully,
/// SIGHUP reloads the config.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; from here on these signals are queued for [`Signals::serve`].
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on SIGHUP until SIGTERM or SIGINT.
    async fn serve(mut self, gateway: &std::sync::Arc<baton::gateway::Gateway>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // The outcome is logged, counted and shown on the status page.
                    let _ = gateway.reload().await;
                }
            }
        }
    }
}

fn explain(code: Option<&str>) -> ExitCode {
    let Some(code) = code else {
        println!("Cause codes (the Baton-Error header of a response baton generated):\n");
        for cause in Cause::ALL {
            println!(
                "  {:32} {}  {}",
                cause.code(),
                cause.status().as_u16(),
                cause.title()
            );
        }
        println!("\n`baton explain CAUSE` tells what one means and how to fix it.");
        return ExitCode::SUCCESS;
    };
    let Some(cause) = Cause::from_code(code) else {
        eprintln!("baton: unknown cause {code:?}; `baton explain` lists them all");
        return ExitCode::FAILURE;
    };
    let text = cause.explain();
    println!(
        "{} — {} {}",
        cause.code(),
        cause.status().as_u16(),
        cause.title()
    );
    println!("\nWhat it means\n  {}", text.meaning);
    println!("\nLikely causes\n  {}", text.likely);
    println!("\nHow to fix it\n  {}", text.fix);
    println!("\nMay the client retry?\n  {}", text.client_retry);
    println!(
        "\nDelivery: {} (Baton-Delivery header)",
        cause.delivery().as_str()
    );
    ExitCode::SUCCESS
}
