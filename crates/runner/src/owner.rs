//! Which process owns an environment, recorded in labels so `berth gc` can tell, after a
//! crash, whether the owner is still alive.

use std::collections::BTreeMap;

/// Label: host name of the owning process.
pub const LABEL_OWNER_HOST: &str = "berth.dev/owner-host";
/// Label: pid of the owning process.
pub const LABEL_OWNER_PID: &str = "berth.dev/owner-pid";
/// Label: start time of the owning process (clock ticks since boot), against pid reuse.
pub const LABEL_OWNER_START: &str = "berth.dev/owner-start";

/// A process that owns environments: host, pid and start time.
///
/// ```
/// use berth_runner::owner::Owner;
///
/// let me = Owner::current();
/// let labels = me.labels();
/// assert_eq!(Owner::from_labels(&labels), Some(me.clone()));
/// assert_eq!(me.is_alive(), Some(true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Host name (sanitised to a label value).
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (0 when unknown).
    pub start: u64,
}

impl Owner {
    /// This process.
    #[must_use]
    pub fn current() -> Self {
        // Read once (a file under /proc and the host name), then cloned: it is asked for from
        // async code, where a file read would block a runtime worker each time.
        static CURRENT: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let pid = std::process::id();
                Self {
                    host: this_host(),
                    pid,
                    start: process_start(pid).unwrap_or(0),
                }
            })
            .clone()
    }

    /// The labels recording this owner.
    #[must_use]
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_OWNER_HOST.to_owned(), self.host.clone()),
            (LABEL_OWNER_PID.to_owned(), self.pid.to_string()),
            (LABEL_OWNER_START.to_owned(), self.start.to_string()),
        ])
    }

    /// The owner recorded in `labels`, if any.
    #[must_use]
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            host: labels.get(LABEL_OWNER_HOST)?.clone(),
            pid: labels.get(LABEL_OWNER_PID)?.parse().ok()?,
            start: labels.get(LABEL_OWNER_START)?.parse().ok()?,
        })
    }

    /// Whether the owner still runs: `None` when it ran on another host (unknowable here).
    #[must_use]
    pub fn is_alive(&self) -> Option<bool> {
        if self.host != this_host() {
            return None;
        }
        Some(match process_start(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        })
    }
}

fn this_host() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "localhost".into());
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let clean = clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Field 22 of /proc/PID/stat; `None` when the process does not exist. Zombies count as gone.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}
