//! bs-jobs: not built yet; see the issue for bs-jobs.

fn main() -> std::process::ExitCode {
    eprintln!("bs-jobs: not implemented yet");
    std::process::ExitCode::from(2)
}
