//! Malformed configuration files: `wsbridge standalone --check -f FILE` on
//! each file of `tests/corpus/malformed/` (and on a few that are generated:
//! oversize files, devices, pipes, folder loops) exits non-zero with a
//! message that names the file and says what is wrong, never panics, and
//! stays within a time and memory bound (alias bombs, deep nesting).
//!
//! Each corpus file starts with `# expect: TEXT`; the output must contain
//! the line `FILE: TEXT...`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/malformed");
/// Per file: the parser's worst cases must finish well within this.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Address space of the checked process (KiB): a few times what a normal
/// check takes, far below what an alias bomb or a huge file would need.
const MEMORY_LIMIT_KIB: u64 = 512 * 1024;

struct Run {
    code: Option<i32>,
    output: String,
    took: Duration,
}

/// Runs `wsbridge standalone --check -f PATH` (relative to `dir`) under the
/// memory limit, killing it after the time limit.
fn check(dir: &Path, paths: &[&str]) -> Run {
    let mut args = vec!["standalone".to_string(), "--check".to_string()];
    for p in paths {
        args.push("-f".into());
        args.push(p.to_string());
    }
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_LIMIT_KIB}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_wsbridge"))
        .args(&args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("MALLOC_ARENA_MAX", "2")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        }),
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&readers.0.join().unwrap()),
        String::from_utf8_lossy(&readers.1.join().unwrap())
    );
    use std::os::unix::process::ExitStatusExt;
    let code = status.map(|s| s.code().unwrap_or(128 + s.signal().unwrap_or(0)));
    Run { code, output, took }
}

/// What is wrong with a run that should have refused `file` with `expect`.
fn problem(file: &str, expect: &str, run: &Run) -> Option<String> {
    let Run { code, output, took } = run;
    match code {
        None => Some(format!("{file}: still running after {took:?}")),
        Some(0) => Some(format!("{file}: accepted:\n{output}")),
        Some(101) => Some(format!("{file}: panicked (exit 101):\n{output}")),
        Some(c) if *c > 128 => Some(format!(
            "{file}: killed by signal {} (memory?):\n{output}",
            c - 128
        )),
        Some(1) if output.contains("panicked") => Some(format!("{file}: panicked:\n{output}")),
        Some(1) if !output.contains(&format!("{file}: {expect}")) => Some(format!(
            "{file}: expected a line starting {file}: {expect:?} in:\n{output}"
        )),
        Some(1) => None,
        Some(c) => Some(format!("{file}: exit code {c}:\n{output}")),
    }
}

fn corpus() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} does not start with `# expect: `", path.display()))
                .trim()
                .to_string();
            (path.file_name().unwrap().to_str().unwrap().to_string(), expect)
        })
        .collect()
}

#[test]
fn every_malformed_file_is_refused_with_a_clear_error_in_bounded_time_and_memory() {
    let corpus = corpus();
    assert!(corpus.len() >= 30, "only {} files in the corpus", corpus.len());
    let mut failures = Vec::new();
    for (file, expect) in &corpus {
        let run = check(Path::new(CORPUS), &[file]);
        failures.extend(problem(file, expect, &run));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_limits_leave_room_for_valid_configurations() {
    // The bounds above are not what makes the corpus fail: a real example
    // passes under the same limits.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let run = check(Path::new(examples), &["market-feed.yaml"]);
    assert_eq!(run.code, Some(0), "{}", run.output);
    // Deep but legitimate flow nesting (a JSON open message in flow style).
    let dir = TempDir::new("deep-ok");
    let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    dir.write(
        "deep.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep}}\ndata: {{a: {nested}}}\nbinaryData: {{}}\n# {}\n",
            "[".repeat(1000)
        ),
    );
    let run = check(&dir.0, &["deep.yaml"]);
    assert_eq!(run.code, Some(0), "{}", run.output);
}

#[test]
fn every_error_of_every_file_is_reported_in_one_run() {
    let run = check(
        Path::new(CORPUS),
        &["duplicate-key.yaml", "name-a-number.yaml", "binary-garbage.yaml"],
    );
    assert_eq!(run.code, Some(1), "{}", run.output);
    for line in [
        "duplicate-key.yaml: invalid YAML: duplicate key",
        "name-a-number.yaml: Channel (document 1): metadata.name: must be a string",
        "binary-garbage.yaml: not UTF-8 text",
    ] {
        assert!(run.output.contains(line), "{line:?} not in:\n{}", run.output);
    }
}

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "wsbridge-badinput-{prefix}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_huge_file_is_refused_before_it_is_read() {
    let dir = TempDir::new("huge");
    // 17 MiB of one valid document: a big string in a ConfigMap.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{a: \"{}\"}}\n",
        "x".repeat(17 * 1024 * 1024)
    );
    dir.write("huge.yaml", &big);
    let run = check(&dir.0, &["huge.yaml"]);
    assert_eq!(
        problem("huge.yaml", "file larger than the limit of 16 MiB", &run),
        None
    );
}

#[test]
fn a_large_file_under_the_limit_is_read_in_bounded_time_and_memory() {
    let dir = TempDir::new("large");
    // 15 MiB, one duplicate key at the end.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{a: \"{}\", a: b}}\n",
        "x".repeat(15 * 1024 * 1024)
    );
    dir.write("large.yaml", &big);
    let run = check(&dir.0, &["large.yaml"]);
    assert_eq!(
        problem("large.yaml", "invalid YAML: data: duplicate key \"a\"", &run),
        None
    );
}

#[test]
fn many_documents_in_one_file_are_all_checked_in_bounded_time() {
    let dir = TempDir::new("many");
    let mut yaml = String::new();
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: c{i}}}\nspec: {{}}\n"
        ));
    }
    yaml.push_str("---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: c7}\nspec: {}\n");
    dir.write("many.yaml", &yaml);
    let run = check(&dir.0, &["many.yaml"]);
    assert_eq!(
        problem("many.yaml", "Channel default/c7: defined twice", &run),
        None
    );
}

#[test]
fn devices_pipes_and_folders_given_as_files_are_refused_not_read() {
    let dir = TempDir::new("special");
    let fifo = dir.0.join("pipe.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // A pipe nobody writes to would block a reader forever; /dev/zero would
    // fill memory.
    for (path, expect) in [
        ("pipe.yaml", "cannot read: not a regular file"),
        ("/dev/zero", "cannot read: not a regular file"),
        ("missing.yaml", "cannot read: No such file or directory"),
    ] {
        let run = check(&dir.0, &[path]);
        assert_eq!(problem(path, expect, &run), None);
    }
    // In a folder too: the pipe is named like a YAML file.
    let run = check(&dir.0, &["."]);
    assert_eq!(
        problem("./pipe.yaml", "cannot read: not a regular file", &run),
        None
    );
}

#[test]
fn a_symbolic_link_loop_in_a_folder_is_searched_once() {
    let dir = TempDir::new("loop");
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    dir.write(
        "sub/channel.yaml",
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticker}\nspec: {}\n",
    );
    std::os::unix::fs::symlink("..", dir.0.join("sub/parent")).unwrap();
    let run = check(&dir.0, &["."]);
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(run.output.contains("1 channel(s)"), "{}", run.output);
}

#[test]
fn an_empty_folder_says_that_no_yaml_file_was_found() {
    let dir = TempDir::new("empty");
    std::fs::create_dir(dir.0.join("nothing")).unwrap();
    let run = check(&dir.0, &["nothing"]);
    assert_eq!(problem("nothing", "no *.yaml or *.yml files found", &run), None);
}
