//! The set-up a new user goes through: `make run` on a machine without a new enough Rust
//! toolchain stops first, saying what to install (`tools/check-toolchain.sh`).

use std::path::Path;
use std::process::Command;

fn check_with_rustc(rustc: &Path) -> (bool, String) {
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/check-toolchain.sh"
    ))
    .env("RUSTC", rustc)
    .output()
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_or_old_rust_toolchain_is_named_with_its_install_line() {
    let dir = std::env::temp_dir().join("etcd-sync-test-toolchain");
    std::fs::create_dir_all(&dir).unwrap();

    let (ok, stderr) = check_with_rustc(&dir.join("no-such-rustc"));
    assert!(!ok);
    assert!(stderr.contains("Rust >= 1.85"), "{stderr}");
    assert!(stderr.contains("https://sh.rustup.rs"), "{stderr}");

    // Debian 12's own rustc.
    let old = dir.join("rustc-1.63");
    std::fs::write(
        &old,
        "#!/bin/sh\necho 'rustc 1.63.0 (4b91a6ea7 2022-08-08)'\n",
    )
    .unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&old)
        .status()
        .unwrap()
        .success());
    let (ok, stderr) = check_with_rustc(&old);
    assert!(!ok);
    assert!(
        stderr.contains("but") && stderr.contains("is 1.63.0"),
        "{stderr}"
    );
    assert!(stderr.contains("rustup update stable"), "{stderr}");

    // This machine's, which built this test.
    let (ok, stderr) = check_with_rustc(Path::new("rustc"));
    assert!(ok, "{stderr}");
}
