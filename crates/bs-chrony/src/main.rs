fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_chrony::cli::Cli, bs_chrony::Error, _>(bs_chrony::TOOL, bs_chrony::run)
}
