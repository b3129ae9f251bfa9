//! bs-chrony: not built yet; see the issue for bs-chrony.

fn main() -> std::process::ExitCode {
    eprintln!("bs-chrony: not implemented yet");
    std::process::ExitCode::from(2)
}
