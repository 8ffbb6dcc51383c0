//! `esr-exporter` binary: parse the command line, hand over to the library,
//! and turn the outcome into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = esr_exporter::cli::parse_args();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(esr_exporter::cli::execute(cli))
}
