//! The backend against a real Linux kernel: User-Mode Linux's `virtio_uml` frontend with Linux's
//! own `virtio_balloon` driver. Runs when the project's fetch script has cached UML
//! (`python -m vballoon.uml fetch`, `$VBALLOON_UML_DIR` or ~/.cache/vballoon/uml); otherwise it
//! says so and returns (the pytest real-guest suite fetches it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vballoon::vhost_user::VhostUserBackend;

fn uml_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VBALLOON_UML_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vballoon/uml"))
        })?;
    (dir.join("READY.json").exists() && dir.join("linux.uml").exists()).then_some(dir)
}

fn balloon_module(dir: &std::path::Path) -> Option<PathBuf> {
    let mods = std::fs::read_dir(dir.join("root/usr/lib/uml/modules")).ok()?;
    let mut v: Vec<PathBuf> = mods.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    let m = v.pop()?.join("kernel/drivers/virtio/virtio_balloon.ko");
    m.exists().then_some(m)
}

fn mem_total_kb(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in guest output:\n{out}"));
    line.split_whitespace()
        .rev()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

#[test]
fn test_real_linux_driver_inflates_unloads_and_reloads() {
    let Some(dir) = uml_dir() else {
        eprintln!("skipped: User-Mode Linux is not cached (python -m vballoon.uml fetch)");
        return;
    };
    let module = balloon_module(&dir).expect("virtio_balloon.ko in the UML cache");
    let busybox = dir.join("root/usr/bin/busybox");
    let work = std::env::temp_dir().join(format!("vballoon-uml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let sock = work.join("vu.sock");
    // No DEFLATE_ON_OOM, so MemTotal shrinks by the balloon (Linux's adjust_managed_page_count).
    // All five queues, so a reload re-sets up rings the guest may have reused (it sends no
    // message at rmmod; the reload's SET_FEATURES is the reset).
    let feats = [
        "must_tell_host",
        "stats_vq",
        "free_page_hint",
        "page_poison",
        "reporting",
    ];
    let b = VhostUserBackend::new(&sock, &feats, 256).unwrap();
    b.set_target(16384).unwrap();
    let init = work.join("init.sh");
    let bb = busybox.display();
    std::fs::write(
        &init,
        format!(
            "#!{bb} sh\nB={bb}\n$B mount -t proc proc /proc\n\
             echo \"before: $($B grep MemTotal /proc/meminfo)\"\n\
             $B insmod {m}\n$B sleep 3\n\
             echo \"inflated: $($B grep MemTotal /proc/meminfo)\"\n\
             $B rmmod virtio_balloon\n\
             echo \"unloaded: $($B grep MemTotal /proc/meminfo)\"\n\
             $B insmod {m}\n$B sleep 3\n\
             echo \"reloaded: $($B grep MemTotal /proc/meminfo)\"\n\
             echo o > /proc/sysrq-trigger\n$B sleep 10\n",
            m = module.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t0 = Instant::now();
    let out = Command::new(dir.join("linux.uml"))
        .args([
            "mem=256M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "hostfs=/",
            "rw",
            &format!("init={}", init.display()),
            &format!("virtio_uml.device={}:5", sock.display()),
            "con=null",
            "con0=fd:0,fd:1",
        ])
        .env("TMPDIR", &work)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run linux.uml");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(t0.elapsed() < Duration::from_secs(120));
    let before = mem_total_kb(&out, "before:");
    assert_eq!(before - mem_total_kb(&out, "inflated:"), 16384 * 4, "{out}");
    assert_eq!(mem_total_kb(&out, "unloaded:"), before, "rmmod deflates");
    assert_eq!(
        before - mem_total_kb(&out, "reloaded:"),
        16384 * 4,
        "reload inflates"
    );
    let st = b.status();
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(st.frontends_served, 1);
    // Two inflates of 64 MiB in 256-PFN buffers, a deflate between them.
    assert_eq!(st.totals.inflate_buffers, 2 * 64);
    assert!(st.totals.deflate_buffers >= 64);
    assert!(st.totals.pages_discarded >= 2 * 16384);
    assert!(
        st.totals.stats_updates >= 1,
        "the driver primes the stats queue"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&work);
}
