//! `kubernetes.schedules`: how the schedules berth makes (CronJobs, Argo CronWorkflows)
//! start and keep their runs, checked by name when the config loads.

use berth_engine_k8s::{ConcurrencyPolicy, ScheduleSettings};
use serde::{Deserialize, Serialize};

use super::keys::{section, Schema, ValueKind};
use super::HumanDuration;

impl Schema for ConcurrencyPolicy {
    fn kind() -> ValueKind {
        ValueKind::Text
    }
}

/// `concurrency_policy`: `Allow`, `Forbid` or `Replace`, as Kubernetes spells them.
mod concurrency_policy {
    use super::ConcurrencyPolicy;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &ConcurrencyPolicy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<ConcurrencyPolicy, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(|_| {
            de::Error::custom(format!("expected Allow, Forbid or Replace, got {text:?}"))
        })
    }
}

section! {
    /// `kubernetes.schedules`: settings of every `berth submit --schedule` CronJob and every
    /// rendered CronJob or CronWorkflow.
    ///
    /// ```
    /// use berth_runner::config::BerthConfig;
    ///
    /// let config = BerthConfig::from_yaml_str(
    ///     "kubernetes:\n  schedules: {concurrency_policy: Replace, failed_jobs_history_limit: 5}\n",
    /// ).unwrap();
    /// let settings = config.kubernetes.schedules.settings().unwrap();
    /// assert_eq!(settings.failed_jobs_history_limit, Some(5));
    /// assert!(BerthConfig::from_yaml_str("kubernetes:\n  schedules: {concurrency_policy: replace}\n").is_err());
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct SchedulesSection {
        /// Create schedules suspended (no run starts until resumed on the cluster).
        pub suspend: bool,
        /// `Allow`, `Forbid` (default: a due run is skipped while the last one runs) or
        /// `Replace` (the running one is cancelled).
        #[serde(with = "concurrency_policy")]
        pub concurrency_policy: ConcurrencyPolicy,
        /// Succeeded runs kept; unset = the cluster's default (3).
        pub successful_jobs_history_limit: Option<u64>,
        /// Failed runs kept; unset = the cluster's default (1).
        pub failed_jobs_history_limit: Option<u64>,
        /// A run that cannot start within this long of its time is skipped, e.g. `5m`.
        pub starting_deadline: Option<HumanDuration>,
    }
}

impl SchedulesSection {
    /// The settings as the engine takes them.
    ///
    /// # Errors
    /// `(key, reason)` for a history limit beyond what the API holds (2147483647).
    pub fn settings(&self) -> Result<ScheduleSettings, (String, String)> {
        let limit = |key: &str, n: Option<u64>| -> Result<Option<i32>, (String, String)> {
            n.map(|n| {
                i32::try_from(n).map_err(|_| {
                    (
                        format!("kubernetes.schedules.{key}"),
                        format!("expected at most {}, got {n}", i32::MAX),
                    )
                })
            })
            .transpose()
        };
        let mut out = ScheduleSettings::default();
        out.suspend = self.suspend;
        out.concurrency_policy = self.concurrency_policy;
        out.successful_jobs_history_limit = limit(
            "successful_jobs_history_limit",
            self.successful_jobs_history_limit,
        )?;
        out.failed_jobs_history_limit =
            limit("failed_jobs_history_limit", self.failed_jobs_history_limit)?;
        out.starting_deadline_seconds = self
            .starting_deadline
            .map(|d| i64::try_from(d.get().as_secs()).unwrap_or(i64::MAX));
        Ok(out)
    }
}
