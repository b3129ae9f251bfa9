//! bs-users: accounts, groups and SSH keys of the people who may log in.
fn main() -> std::process::ExitCode {
    bs_core::cli::main("bs-users", bs_users::cli::run)
}
