//! The smol runtime brings no second async reactor: the workspace's lock file holds one
//! async-io (major 2, the one smol 2 uses) and neither tokio nor async-std. Reading the lock
//! file makes a dependency that pulls another in fail here rather than in production.

#[test]
fn one_async_io_and_no_other_reactor() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("the workspace lock file");
    let mut packages: Vec<(String, String)> = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            packages.push((n, v.trim_matches('"').to_owned()));
        }
    }
    assert!(
        packages.iter().any(|(n, _)| n == "smol"),
        "parsed the lock file"
    );
    let async_io: Vec<&String> = packages
        .iter()
        .filter(|(n, _)| n == "async-io")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(async_io.len(), 1, "one async-io: {async_io:?}");
    assert!(async_io[0].starts_with("2."), "async-io {}", async_io[0]);
    for other in ["tokio", "async-std", "async-global-executor"] {
        assert!(
            !packages.iter().any(|(n, _)| n == other),
            "{other} is in the dependency graph"
        );
    }
}
