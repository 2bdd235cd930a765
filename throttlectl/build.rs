//! Generates shell completions (bash, zsh, fish) and the man page from the
//! clap definitions into $OUT_DIR, and into $THROTTLECTL_GEN_DIR when set
//! (the install script sets it).
use std::path::{Path, PathBuf};

use clap::CommandFactory;

#[allow(dead_code)]
mod cli {
    include!("src/cli.rs");
}

fn generate(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cli::Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "throttlectl", dir)?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    std::fs::write(dir.join("throttlectl.1"), page)
}

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-env-changed=THROTTLECTL_GEN_DIR");
    generate(&PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")))?;
    if let Ok(dir) = std::env::var("THROTTLECTL_GEN_DIR") {
        generate(Path::new(&dir))?;
    }
    Ok(())
}
