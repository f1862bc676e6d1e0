//! Whether the store's Redis keeps what it holds across a restart: the
//! idempotency records (and quotas) of cluster mode live there only. Read with
//! `CONFIG GET appendonly appendfsync save` (on every seed node of a Redis
//! Cluster; the weakest counts), logged at start-up and whenever it changes,
//! and shown on `/metrics` as `tenant_guard_store_redis_persistence{mode}`.

use std::fmt;

/// How much of Redis's data survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Persistence {
    /// Nothing: every record is gone after a restart.
    None,
    /// RDB snapshots only: writes since the last snapshot are lost.
    Snapshots,
    /// AOF, `appendfsync no`: the OS flushes (about every 30 s).
    AofNo,
    /// AOF, `appendfsync everysec`: a crash loses at most about a second.
    AofEverysec,
    /// AOF, `appendfsync always`: every acknowledged write survives.
    AofAlways,
    /// Redis did not answer, or refuses `CONFIG` (e.g. a managed service).
    Unknown,
}

impl Persistence {
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Snapshots,
        Self::AofNo,
        Self::AofEverysec,
        Self::AofAlways,
        Self::Unknown,
    ];

    /// From `CONFIG GET` answers (`appendonly`, `appendfsync`, `save`).
    pub fn from_config(appendonly: &str, appendfsync: &str, save: &str) -> Self {
        if appendonly.eq_ignore_ascii_case("yes") {
            match appendfsync.to_ascii_lowercase().as_str() {
                "always" => Self::AofAlways,
                "everysec" => Self::AofEverysec,
                _ => Self::AofNo,
            }
        } else if save.trim().is_empty() {
            Self::None
        } else {
            Self::Snapshots
        }
    }

    /// The `mode` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Snapshots => "rdb",
            Self::AofNo => "aof_no",
            Self::AofEverysec => "aof_everysec",
            Self::AofAlways => "aof_always",
            Self::Unknown => "unknown",
        }
    }

    /// The weaker of two nodes' settings (an unknown node makes it unknown).
    pub fn weakest(self, other: Self) -> Self {
        if self == Self::Unknown || other == Self::Unknown {
            Self::Unknown
        } else {
            self.min(other)
        }
    }
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none (no AOF, no snapshots): a Redis restart loses every idempotency record (a retried POST executes again) and every calendar quota count (a month starts again); run Redis with appendonly yes",
            Self::Snapshots => "RDB snapshots only: a Redis restart loses the records and quota counts written since the last snapshot; run Redis with appendonly yes",
            Self::AofNo => "AOF with appendfsync no: a Redis crash can lose the last ~30 s of records; prefer appendfsync everysec or always",
            Self::AofEverysec => "AOF with appendfsync everysec: a Redis crash can lose the last second of records",
            Self::AofAlways => "AOF with appendfsync always: every acknowledged record survives a Redis restart",
            Self::Unknown => "unknown (Redis did not answer CONFIG GET): check appendonly/appendfsync yourself",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_decides_the_mode_and_the_weakest_node_counts() {
        assert_eq!(
            Persistence::from_config("yes", "always", ""),
            Persistence::AofAlways
        );
        assert_eq!(
            Persistence::from_config("yes", "everysec", "3600 1"),
            Persistence::AofEverysec
        );
        assert_eq!(
            Persistence::from_config("no", "always", "3600 1"),
            Persistence::Snapshots
        );
        assert_eq!(Persistence::from_config("no", "", ""), Persistence::None);
        assert_eq!(
            Persistence::AofAlways.weakest(Persistence::None),
            Persistence::None
        );
        assert_eq!(
            Persistence::AofAlways.weakest(Persistence::Unknown),
            Persistence::Unknown
        );
    }
}
