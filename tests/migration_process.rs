//! A migration between two real processes over TCP loopback, both guests memfd-backed.
//!
//! The test binary re-executes itself as the destination: `helper_destination` is a no-op
//! unless `VB_MIGRATE_HELPER` is set, in which case it listens on an ephemeral port, prints
//! `PORT <n>`, receives one migration (with its verify trailer) and prints `REPORT k=v ...`.
//! The source side runs a workload on its guest during the migration and sends checksums of
//! every used page at the end; both sides' verdicts must agree that nothing was lost.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vballoon::machine::{listen_on, send, FreeListStandIn, HintMode, MigrateOptions, Scenario};
use vballoon::memory::Backing;
use vballoon::migration::{tcp_listen, DestConfig};

const HELPER_ENV: &str = "VB_MIGRATE_HELPER";
const GUEST_BYTES: u64 = 64 << 20;

#[test]
fn helper_destination() {
    let Ok(size) = std::env::var(HELPER_ENV) else {
        return; // run as an ordinary test: nothing to do
    };
    let size: u64 = size.parse().expect("guest size");
    let listener = tcp_listen("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut out = std::io::stdout();
    writeln!(out, "PORT {port}").unwrap();
    out.flush().unwrap();
    let cfg = DestConfig {
        accept_timeout: Duration::from_secs(30),
        ..DestConfig::default()
    };
    let r = listen_on(&listener, size, Backing::Memfd, cfg).unwrap();
    let v = r.verify.clone().expect("the source sent a verify trailer");
    writeln!(
        out,
        "REPORT rounds={} data_pages={} zero_pages={} bytes={} populated={} checked={} mismatched={}",
        r.rounds,
        r.data_pages,
        r.zero_pages,
        r.bytes_received,
        r.pages_populated,
        v.pages_checked,
        v.mismatched
    )
    .unwrap();
    out.flush().unwrap();
}

#[test]
fn test_two_processes_with_a_running_workload() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return; // we are the helper
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_destination",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, GUEST_BYTES.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("helper exited before listening")
            .unwrap();
        // libtest prints "test helper_destination ... " without a newline first.
        if let Some((_, p)) = line.split_once("PORT ") {
            break p.trim().parse().unwrap();
        }
    };

    let (guest, info) = Scenario::m2()
        .with_guest_bytes(GUEST_BYTES)
        .with_backing(Backing::Memfd)
        .build()
        .unwrap();
    let opts = MigrateOptions {
        hints: HintMode::Bitmap,
        hint_provider: Some(Arc::new(FreeListStandIn::default())),
        bandwidth_bytes_per_s: 300_000_000,
        downtime_target: Duration::from_millis(10),
        dirty_rate_bytes_per_s: 40 << 20,
        io_timeout: Duration::from_secs(20),
        ..MigrateOptions::default()
    };
    let r = send(("127.0.0.1", port), &guest, &opts).unwrap();

    let report: HashMap<String, u64> = loop {
        let line = lines
            .next()
            .expect("helper exited without a report")
            .unwrap();
        if let Some((_, rest)) = line.split_once("REPORT ") {
            break rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
                .collect();
        }
    };
    assert!(
        child.wait().unwrap().success(),
        "the destination process failed"
    );

    let rv = r.remote_verify.clone().unwrap();
    assert!(rv.ok(), "{rv:?}");
    assert_eq!(report["mismatched"], 0);
    assert_eq!(report["checked"], rv.pages_checked);
    assert_eq!(rv.pages_checked, guest.used_pages().count());
    assert_eq!(report["bytes"], r.bytes_sent);
    assert_eq!(report["data_pages"], r.data_pages);
    assert_eq!(u64::from(r.rounds), report["rounds"]);
    assert!(
        r.rounds >= 2,
        "the workload dirtied pages: {:?}",
        r.per_round
    );
    assert!(r.hinted_pages > 0);
    // Stale free pages were hinted, so the destination populated about what the guest uses.
    assert!(
        report["populated"] * 4096 < info.used_bytes * 2,
        "{report:?} {info:?}"
    );
}
