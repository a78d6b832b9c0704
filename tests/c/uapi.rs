//! What this machine's Linux UAPI headers say, as `NAME VALUE` pairs.
//!
//! Compiles `tests/c/vring_check.c` with `$CC` (default `cc`) in a temporary directory, runs it
//! once per test binary and parses its output. Include from a test with
//! `#[path = "c/uapi.rs"] mod uapi;` and call [`uapi()`]. Names are the header's macro names
//! (`VIRTIO_BALLOON_F_STATS_VQ`, `VIRTIO_BALLOON_S_MEMFREE`, ...) and dotted families
//! (`sizeof.virtio_balloon_config`, `offsetof.virtio_balloon_config.actual`, `vring_size.N.ALIGN`,
//! `need_event.*`); see the comment at the top of the C file.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The parsed output of `vring_check`.
pub struct Uapi {
    values: BTreeMap<String, u64>,
}

impl Uapi {
    /// The value of `name`; panics with the name if the header did not define it.
    pub fn get(&self, name: &str) -> u64 {
        match self.values.get(name) {
            Some(v) => *v,
            None => panic!("vring_check printed no value for {name}"),
        }
    }

    /// The value of `name`, if this header defines it (e.g. stats tags of newer kernels).
    pub fn try_get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    /// Every `(name, value)` whose name starts with `prefix`, in name order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, u64)> {
        self.values
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), *v))
    }
}

fn build_and_run() -> Uapi {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/vring_check.c");
    let dir = std::env::temp_dir().join(format!("vballoon-vring-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let bin = dir.join("vring_check");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .args(["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().expect("run vring_check");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.status.success(), "vring_check failed");
    let text = String::from_utf8(run.stdout).expect("vring_check prints ASCII");
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value {line:?}"));
        assert!(
            values.insert(name.to_string(), value).is_none(),
            "{name} twice"
        );
    }
    Uapi { values }
}

/// The headers' values, built and parsed on first use.
pub fn uapi() -> &'static Uapi {
    static UAPI: OnceLock<Uapi> = OnceLock::new();
    UAPI.get_or_init(build_and_run)
}
