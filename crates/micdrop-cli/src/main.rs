//! The `micdrop` command.
fn main() {}
