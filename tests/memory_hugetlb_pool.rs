//! The hugetlb pool reservation puts /proc/sys/vm/nr_hugepages back (its own binary, so no
//! other test's reservation runs at the same time).

use vballoon::memory::{HugetlbPool, HugetlbReservation};

#[test]
fn test_reservation_gives_the_pool_back() {
    let Ok(before) = HugetlbPool::read() else {
        return eprintln!("skipping: no 2 MiB hugetlb pages in this kernel");
    };
    let r = match HugetlbReservation::new(4) {
        Ok(r) => r,
        Err(e) => return eprintln!("skipping: the kernel refused hugetlb pages: {e}"),
    };
    assert_eq!(r.pages(), 4);
    assert_eq!(HugetlbPool::read().unwrap().total, before.total + 4);
    let r2 = HugetlbReservation::new(2).unwrap();
    assert_eq!(HugetlbPool::read().unwrap().total, before.total + 6);
    drop(r);
    assert_eq!(HugetlbPool::read().unwrap().total, before.total + 2);
    // Even a panic gives the pages back: the guard drops while unwinding.
    let caught = std::panic::catch_unwind(move || {
        let _held = r2;
        panic!("test failure while holding pages");
    });
    assert!(caught.is_err());
    assert_eq!(HugetlbPool::read().unwrap().total, before.total);
}
