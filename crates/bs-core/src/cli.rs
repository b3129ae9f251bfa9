//! The flags every tool shares and the `main` every tool runs through:
//! parse, run, turn an error into an error record, always end with the
//! summary line, map the outcome to the exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Map;

use crate::config::{Config, Source};
use crate::error::{CoreError, Result};
use crate::exit::Exit;
use crate::lock::RunLock;
use crate::output::Output;
use crate::plan::PlanInput;
use crate::root::Root;

/// Flags every tool takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Converge this directory instead of the host: a sandbox root. Commands
    /// that would touch the live host are skipped and reported.
    #[arg(
        long,
        env = "BS_ROOT",
        default_value = "/",
        global = true,
        value_name = "DIR"
    )]
    pub root: PathBuf,
    /// The repository checkout holding backends/, developers and keys/.
    #[arg(
        long,
        env = "BS_REPO",
        default_value = ".",
        global = true,
        value_name = "DIR"
    )]
    pub repo: PathBuf,
    /// The backend whose config to use (backends/<NAME>/backend.toml).
    #[arg(long, env = "BS_BACKEND", global = true, value_name = "NAME")]
    pub backend: Option<String>,
    /// Seconds to wait for another bs run to release the run lock.
    #[arg(long, default_value_t = 60, global = true, value_name = "SECS")]
    pub lock_timeout: u64,
}

impl Global {
    pub fn root(&self) -> Result<Root> {
        if self.root.as_os_str() == "/" {
            Ok(Root::live())
        } else {
            let abs = if self.root.is_absolute() {
                self.root.clone()
            } else {
                std::env::current_dir()
                    .map_err(|e| CoreError::io(".", e))?
                    .join(&self.root)
            };
            Root::new(abs)
        }
    }

    pub fn config(&self, root: &Root) -> Result<Config> {
        let backend = self.backend.clone().ok_or_else(|| {
            CoreError::Usage("no backend given: pass --backend NAME or set BS_BACKEND".into())
        })?;
        Config::load(
            &Source {
                repo: self.repo.clone(),
                backend,
            },
            root,
        )
    }

    pub fn lock(&self, root: &Root) -> Result<RunLock> {
        RunLock::acquire(root, Duration::from_secs(self.lock_timeout))
    }
}

/// `apply`'s flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApplyArgs {
    /// Apply only the changes of this plan (a file, or - for stdin), each
    /// re-checked against the live system first.
    #[arg(long, value_name = "FILE|-")]
    pub plan: Option<String>,
}

impl ApplyArgs {
    pub fn plan_input(&self) -> Option<PlanInput> {
        self.plan.as_deref().map(PlanInput::parse)
    }
}

/// An error that ends a run: every tool's error type can be reported.
pub trait Report: std::fmt::Display {
    fn exit(&self) -> Exit;
    fn kind(&self) -> &'static str;
    fn target(&self) -> String;
}

impl Report for CoreError {
    fn exit(&self) -> Exit {
        CoreError::exit(self)
    }
    fn kind(&self) -> &'static str {
        CoreError::kind(self)
    }
    fn target(&self) -> String {
        CoreError::target(self)
    }
}

/// The whole of a tool's `main`: parse `P`, run, report, summarise.
pub fn main<P, E, F>(tool: &'static str, run: F) -> ExitCode
where
    P: Parser,
    E: Report,
    F: FnOnce(P, &mut Output) -> std::result::Result<Map<String, serde_json::Value>, E>,
{
    let mut out = Output::stdout(tool);
    let parsed = match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(Exit::Usage)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let _ = e.print();
            let message = e.kind().to_string();
            out.error("usage", "", &message);
            out.raise(Exit::Usage);
            return out.finish(Map::new()).into();
        }
    };
    let extra = match run(parsed, &mut out) {
        Ok(extra) => extra,
        Err(err) => {
            eprintln!("{tool}: {err}");
            out.error(err.kind(), &err.target(), &err.to_string());
            out.raise(err.exit());
            Map::new()
        }
    };
    out.finish(extra).into()
}
