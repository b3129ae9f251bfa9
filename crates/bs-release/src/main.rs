//! bs-release: release requests, independent reviews and publication of medium-privacy outputs.

fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_release::cli::Cli, bs_release::Error, _>("bs-release", bs_release::run)
}
