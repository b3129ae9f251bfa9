fn main() -> std::process::ExitCode {
    bs_core::cli::main::<bs_docker::cli::Cli, bs_docker::error::DockerError, _>(
        "bs-docker",
        bs_docker::run,
    )
}
