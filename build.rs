//! Puts the git revision into `sync --version` (`ETCD_SYNC_GIT_REVISION` overrides it, for
//! builds without the repository, as in the Dockerfile).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ETCD_SYNC_GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = std::env::var("ETCD_SYNC_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ETCD_SYNC_GIT_REVISION={revision}");
}
