//! `ephemera --version` names the commit it was built from: `EPHEMERA_COMMIT` when the build
//! environment sets it (a release built from a tarball), else `git rev-parse`, else `unknown`.

fn main() {
    println!("cargo:rerun-if-env-changed=EPHEMERA_COMMIT");
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let commit = std::env::var("EPHEMERA_COMMIT").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| "unknown".into())
    });
    println!("cargo:rustc-env=EPHEMERA_COMMIT={commit}");
}
