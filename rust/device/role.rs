//! What a queue is for, by the balloon's numbering (virtio 1.2 §5.5.2): the typed name the
//! device routes queues by and names them by in errors.

use std::fmt;

use crate::abi::QueueIndexes;

/// What a queue is for, by the balloon's numbering (§5.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueRole {
    /// inflateq.
    Inflate,
    /// deflateq.
    Deflate,
    /// statsq.
    Stats,
    /// The seed's misc queue (`misc.rs`).
    Misc,
    /// free_page_vq (`free_page.rs`).
    FreePage,
    /// reporting_vq (`reporting.rs`).
    Reporting,
}

impl QueueRole {
    /// Lower-case name, used in errors.
    pub fn name(self) -> &'static str {
        match self {
            QueueRole::Inflate => "inflate",
            QueueRole::Deflate => "deflate",
            QueueRole::Stats => "stats",
            QueueRole::Misc => "misc",
            QueueRole::FreePage => "free-page",
            QueueRole::Reporting => "reporting",
        }
    }

    /// Whether this is one of the free page hint queues (misc, free-page, reporting).
    pub fn is_hint(self) -> bool {
        matches!(
            self,
            QueueRole::Misc | QueueRole::FreePage | QueueRole::Reporting
        )
    }

    /// The role of each present queue, by index.
    pub fn table(q: &QueueIndexes) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate; usize::from(q.count)];
        let optional = [
            (Some(q.deflate), QueueRole::Deflate),
            (q.stats, QueueRole::Stats),
            (q.misc, QueueRole::Misc),
            (q.free_page, QueueRole::FreePage),
            (q.reporting, QueueRole::Reporting),
        ];
        for (idx, role) in optional {
            if let Some(slot) = idx.and_then(|i| roles.get_mut(usize::from(i))) {
                *slot = role;
            }
        }
        roles
    }
}

impl fmt::Display for QueueRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
