//! Python peers: `python3` with the packages a test needs, which
//! `tests/run.sh` installs. A missing package fails the test, saying what to
//! install: a test that cannot start its peer proves nothing, so it must
//! never pass.

use std::process::Stdio;

/// `python3`, once `modules` import.
pub fn python3_with(modules: &[&str]) -> tokio::process::Command {
    let imports = format!("import {}", modules.join(", "));
    let found = std::process::Command::new("python3")
        .args(["-c", &imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test needs python3 with {modules:?}: `bash tests/run.sh` installs them \
         (or `python3 -m pip install websockets aiohttp`)"
    );
    let mut command = tokio::process::Command::new("python3");
    command.kill_on_drop(true);
    command
}
