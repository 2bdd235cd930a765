//! Builds `throttle-ebpf` for the BPF target with the nightly toolchain and
//! leaves the object in OUT_DIR, where `include_bytes_aligned!` embeds it.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../throttle-ebpf");
    println!("cargo:rerun-if-changed={}/../throttle-common/src", env!("CARGO_MANIFEST_DIR"));
    aya_build::build_ebpf(
        [aya_build::Package { name: "throttle-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
