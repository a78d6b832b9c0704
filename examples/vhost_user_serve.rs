//! Serves the vhost-user balloon on a socket and prints its status every second; a target in
//! pages can be given and is set once a driver is bound.
//!
//! `cargo run --release --example vhost_user_serve -- /tmp/vu.sock [TARGET_PAGES] [SECONDS]`

use std::time::{Duration, Instant};

use vballoon::vhost_user::{VhostUserBackend, DEFAULT_FEATURES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: vhost_user_serve SOCKET [TARGET_PAGES] [SECONDS]")?;
    let target: Option<u32> = args.next().map(|s| s.parse()).transpose()?;
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let feats: Vec<&str> = std::env::var("VU_FEATURES")
        .ok()
        .map(|s| s.leak().split(',').collect())
        .unwrap_or_else(|| DEFAULT_FEATURES.to_vec());
    let mut b = VhostUserBackend::new(&path, &feats, 256)?;
    let t0 = Instant::now();
    let mut set = false;
    let mut inflate_t: Option<Instant> = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(10));
        let st = b.status();
        if let (Some(t), false, true) = (target, set, st.driver_ok) {
            b.set_target(t)?;
            set = true;
            inflate_t = Some(Instant::now());
            eprintln!(
                "[{:.2}s] target {t} set; RAM file backed {} MiB",
                t0.elapsed().as_secs_f64(),
                st.ram_backed_bytes >> 20
            );
        }
        if let (Some(it), Some(t)) = (inflate_t, target) {
            if st.actual_pages == t {
                eprintln!(
                    "[{:.2}s] actual reached {t} in {:.3}s: {} inflate buffers, {} discard \
                     calls, {} pages discarded, RAM file backed {} MiB",
                    t0.elapsed().as_secs_f64(),
                    it.elapsed().as_secs_f64(),
                    st.totals.inflate_buffers,
                    st.totals.discard_calls,
                    st.totals.pages_discarded,
                    st.ram_backed_bytes >> 20
                );
                inflate_t = None;
            }
        }
        if std::env::var_os("VU_VERBOSE").is_some() && (t0.elapsed().as_millis() / 10) % 100 == 0 {
            eprintln!(
                "[{:.1}s] {st:?} stats={:?}",
                t0.elapsed().as_secs_f64(),
                b.stats()
            );
        }
    }
    b.close();
    Ok(())
}
