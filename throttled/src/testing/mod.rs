//! Support shared by unit tests, integration tests and benchmarks.
pub mod lab;

/// A prerequisite is missing. Under `CI=true` that fails the test; locally
/// the test is reported as skipped.
#[track_caller]
pub fn require_root(what: &str) {
    missing(&format!("{what} needs root"));
}

#[track_caller]
pub fn missing(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
}
