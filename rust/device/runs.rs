//! Run merging for the handlers' run buffers, on [`PageRange`]s.

use crate::memory::PageRange;

/// Sorts runs and merges those that overlap or touch, in place.
pub fn merge_runs(runs: &mut Vec<PageRange>) {
    if runs.len() < 2 {
        return;
    }
    if !runs.windows(2).all(|w| w[0].start <= w[1].start) {
        runs.sort_unstable();
    }
    let mut out = 0;
    for i in 1..runs.len() {
        let r = runs[i];
        let prev = runs[out];
        if r.start <= prev.end() {
            runs[out].len = r.end().max(prev.end()) - prev.start;
        } else {
            out += 1;
            runs[out] = r;
        }
    }
    runs.truncate(out + 1);
}

/// Pages in `runs`.
pub fn total_pages(runs: &[PageRange]) -> u64 {
    runs.iter().map(|r| r.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::page_ranges as ranges;

    #[test]
    fn test_merge_runs_joins_overlapping_and_touching() {
        let mut r = ranges(&[(10, 2), (0, 4), (4, 1), (11, 5), (30, 1)]);
        merge_runs(&mut r);
        assert_eq!(r, ranges(&[(0, 5), (10, 6), (30, 1)]));
        assert_eq!(total_pages(&r), 12);
        let mut one = ranges(&[(3, 1)]);
        merge_runs(&mut one);
        assert_eq!(one, ranges(&[(3, 1)]));
    }
}
