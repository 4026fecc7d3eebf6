//! Records the git commit hookbridge is built from, for `hookbridge_build_info{commit}`.
//!
//! `HOOKBRIDGE_GIT_COMMIT` wins when set (the container build has no `.git`; the release
//! workflow passes the tag's commit); otherwise `git rev-parse HEAD`; otherwise "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HOOKBRIDGE_GIT_COMMIT");
    let from_env = std::env::var("HOOKBRIDGE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(git_head).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HOOKBRIDGE_GIT_COMMIT={}", commit.trim());
}

/// The short HEAD commit, and a rerun of this script when HEAD moves.
fn git_head() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD, and the branch file it points to (in a worktree both live in the common git dir).
    for file in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&file).exists() {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    Some(commit)
}
