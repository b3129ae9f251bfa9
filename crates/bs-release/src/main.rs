//! bs-release: not built yet; see the issue for bs-release.

fn main() -> std::process::ExitCode {
    eprintln!("bs-release: not implemented yet");
    std::process::ExitCode::from(2)
}
