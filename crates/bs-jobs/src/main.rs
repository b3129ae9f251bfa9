fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_jobs::cli::Cli, bs_jobs::JobsError, _>("bs-jobs", bs_jobs::run)
}
