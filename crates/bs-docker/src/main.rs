//! bs-docker: not built yet; see the issue for bs-docker.

fn main() -> std::process::ExitCode {
    eprintln!("bs-docker: not implemented yet");
    std::process::ExitCode::from(2)
}
