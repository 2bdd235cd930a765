// bpf-linker is found on PATH by rustc; fail early with a useful message.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") && which::which("bpf-linker").is_err() {
        panic!("bpf-linker not found: run scripts/bootstrap.sh");
    }
}
