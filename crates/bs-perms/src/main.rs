//! bs-perms: not built yet; see the issue for bs-perms.

fn main() -> std::process::ExitCode {
    eprintln!("bs-perms: not implemented yet");
    std::process::ExitCode::from(2)
}
