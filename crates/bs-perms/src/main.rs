fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_perms::cli::Cli, bs_perms::PermsError, _>("bs-perms", bs_perms::run)
}
