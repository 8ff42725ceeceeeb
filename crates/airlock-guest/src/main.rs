//! Airlock's guest agent (being written).
fn main() {}
