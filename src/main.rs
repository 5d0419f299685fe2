//! The `agentkimi` command. Everything it does lives in the `cli` module;
//! this file only hands over to it.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
