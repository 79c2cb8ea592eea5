//! The `dinoedge` command line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A panic is a bug; report it as one instead of a raw backtrace, and exit non-zero.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("dinoedge: internal error (please report): {info}");
    }));
    match std::panic::catch_unwind(cli::main) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}
