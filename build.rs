//! Build identity for `--version`, the start log and `esr_build_info`: the
//! git commit (`ESR_BUILD_COMMIT` when building without `.git`, as in a
//! container build) and the build date, UTC (`SOURCE_DATE_EPOCH` for a
//! reproducible build).

use std::path::Path;
use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = std::env::var("ESR_BUILD_COMMIT")
        .ok()
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => output("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"]),
        Err(_) => output("date", &["-u", "+%Y-%m-%d"]),
    }
    .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ESR_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=ESR_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=ESR_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A new commit moves HEAD or the branch it names (refs are replaced,
    // which changes their folder). Only paths that exist are named: a
    // missing one would run this script on every build.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
