//! `airlock`: give an AI coding agent its own disposable system.

mod app;
mod cli;
mod commands;
mod exit;
mod ui;
mod user;

fn main() {
    std::process::exit(app::main());
}
