fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_host::cli::Cli, bs_host::HostError, _>("bs-host", bs_host::run)
}
