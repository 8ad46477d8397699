//! Runs fuzz inputs through a target on stable, to debug a finding with ordinary tools:
//!
//! ```text
//! cargo run -p hybridcast-tests --bin fuzz_replay -- <target> <file>...
//! ```

use hybridcast_tests::fuzz::TARGETS;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("usage: fuzz_replay <target> <file>...");
        std::process::exit(2);
    };
    let Some((_, run)) = TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("unknown target {name}; targets: {}", names.join(" "));
        std::process::exit(2);
    };
    for path in args {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        eprintln!("{name} <- {path} ({} bytes)", data.len());
        run(&data);
    }
    eprintln!("ok");
}
