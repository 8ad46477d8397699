//! The core stays sans-IO: no clock reads, sockets, threads, global randomness or I/O and async
//! crates. This test reads the crate's own sources and manifest, so a regression fails CI.

use std::fs;
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn core_sources_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 10, "found the sources");
    let forbidden = [
        "Instant::now",
        "SystemTime",
        "UNIX_EPOCH",
        "std::thread",
        "thread::spawn",
        "UdpSocket",
        "TcpStream",
        "TcpListener",
        "std::fs",
        "std::io::stdin",
        "thread_rng",
        "rand::",
        "tokio",
        "async fn",
    ];
    for (path, text) in &files {
        // Doc examples show how a runtime drives the node, and unit tests (at the end of each
        // file, after `#[cfg(test)]`) take a base instant from the clock; only library code
        // counts here.
        let library = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: Vec<&str> = library
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for word in forbidden {
            assert!(
                !code.iter().any(|l| l.contains(word)),
                "{path} uses `{word}`"
            );
        }
    }
}

#[test]
fn core_depends_on_no_io_or_async_crate() {
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("dependencies section");
    for krate in [
        "mio",
        "smol",
        "async-io",
        "socket2",
        "tokio",
        "async-std",
        "rand",
    ] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(krate)),
            "core depends on {krate}"
        );
    }
}
