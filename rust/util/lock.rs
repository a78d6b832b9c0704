//! The one way the crate locks a `Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the data if a thread panicked while holding it: every lock in the
/// crate guards state that stays consistent between statements (counters, queues, handles), so
/// a panic elsewhere must not make the next caller panic too.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lock_recovers_from_poisoning() {
        let m = Mutex::new(1);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = m.lock().unwrap();
                panic!("poison it");
            })
            .join()
        });
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
