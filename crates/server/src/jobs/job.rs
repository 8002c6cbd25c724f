//! One job: its state, its record (output kept up to the cap, with a count of what was
//! dropped), and the followers its output is streamed to.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use berth_engine_core::OutputChunk;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::clock::rfc3339;

/// How long a follower may lag before it is dropped (its stream then ends with a line
/// saying so); the job does not wait longer for a reader.
pub(crate) const FOLLOWER_PATIENCE: Duration = Duration::from_secs(10);

/// Chunks a follower may have in flight.
pub(crate) const FOLLOWER_BUFFER: usize = 256;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a slot.
    Queued,
    /// Its environment is starting or its command runs.
    Running,
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code, or the job could not run (see `error`).
    Failed,
    /// Cancelled by `DELETE`, or by a shutdown.
    Cancelled,
    /// Its timeout killed it.
    TimedOut,
}

impl JobState {
    /// Whether the job has ended.
    #[must_use]
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A piece of output at `offset`: bytes of both streams before it, in arrival order.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) stream: Stream,
    pub(crate) offset: u64,
    pub(crate) data: Bytes,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    pub(crate) state: JobState,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) oom_killed: bool,
}

impl Ending {
    pub(crate) fn of(state: JobState, error: impl Into<String>) -> Self {
        Self {
            state,
            exit_code: None,
            error: Some(error.into()),
            oom_killed: false,
        }
    }
}

/// Everything mutable about a job.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) state: JobState,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) oom_killed: bool,
    pub(crate) image: String,
    pub(crate) created_at: SystemTime,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) started: Option<Instant>,
    pub(crate) completed_at: Option<SystemTime>,
    pub(crate) duration: Option<Duration>,
    pub(crate) ended: Option<Instant>,
    /// Output kept, at most `max_output_bytes` per stream.
    pub(crate) kept: Vec<Entry>,
    pub(crate) kept_bytes: [u64; 2],
    pub(crate) truncated: [bool; 2],
    pub(crate) total: u64,
    pub(crate) followers: Vec<(u64, mpsc::Sender<Entry>)>,
    pub(crate) next_follower: u64,
    pub(crate) cancel_reason: Option<String>,
}

/// One job.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) job_id: Option<Value>,
    pub(crate) record: Mutex<Record>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) done: watch::Sender<bool>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Job {
    pub(crate) fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.record)
    }

    /// Asks the job to stop with `reason`; the first reason given stays.
    pub(crate) fn cancel(&self, reason: &str) {
        {
            let mut r = self.record();
            if r.state.is_final() {
                return;
            }
            r.cancel_reason.get_or_insert_with(|| reason.to_owned());
        }
        self.cancel.send_replace(true);
    }

    pub(crate) async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Waits until the job has ended.
    pub(crate) async fn finished(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub(crate) fn state(&self) -> JobState {
        self.record().state
    }

    /// Keeps `chunk` (within the cap) and hands it to every follower.
    pub(crate) async fn push(&self, chunk: OutputChunk, cap: u64) {
        let (stream, data) = match chunk {
            OutputChunk::Stdout(b) => (Stream::Stdout, b),
            OutputChunk::Stderr(b) => (Stream::Stderr, b),
        };
        if data.is_empty() {
            return;
        }
        let (entry, followers) = {
            let mut r = self.record();
            let entry = Entry {
                stream,
                offset: r.total,
                data,
            };
            r.total += entry.data.len() as u64;
            let i = stream as usize;
            let room = cap.saturating_sub(r.kept_bytes[i]);
            let len = entry.data.len() as u64;
            if len > room {
                r.truncated[i] = true;
            }
            if room > 0 {
                let keep = len.min(room) as usize;
                r.kept_bytes[i] += keep as u64;
                r.kept.push(Entry {
                    data: entry.data.slice(..keep),
                    ..entry.clone()
                });
            }
            (entry, r.followers.clone())
        };
        for (id, tx) in followers {
            if tx
                .send_timeout(entry.clone(), FOLLOWER_PATIENCE)
                .await
                .is_err()
            {
                self.record().followers.retain(|(f, _)| *f != id);
            }
        }
    }

    /// The kept output from `offset` on and, while the job runs and `follow` is asked, a
    /// channel of what comes next.
    pub(crate) fn read_from(
        &self,
        offset: u64,
        follow: bool,
    ) -> (Vec<Entry>, Option<mpsc::Receiver<Entry>>) {
        let mut r = self.record();
        let kept = r
            .kept
            .iter()
            .filter(|e| e.offset + e.data.len() as u64 > offset)
            .map(|e| {
                let skip = offset.saturating_sub(e.offset) as usize;
                Entry {
                    stream: e.stream,
                    offset: e.offset + skip as u64,
                    data: e.data.slice(skip..),
                }
            })
            .collect();
        let rx = (follow && !r.state.is_final()).then(|| {
            let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
            let id = r.next_follower;
            r.next_follower += 1;
            r.followers.push((id, tx));
            rx
        });
        (kept, rx)
    }

    /// The kept output of one stream, as text (invalid UTF-8 replaced).
    pub(crate) fn kept_text(&self, stream: Stream) -> String {
        let r = self.record();
        let mut bytes = Vec::new();
        for e in r.kept.iter().filter(|e| e.stream == stream) {
            bytes.extend_from_slice(&e.data);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The job's record as JSON (`GET /v1/jobs/{id}`).
    pub(crate) fn view(&self) -> Value {
        let r = self.record();
        serde_json::json!({
            "id": self.id,
            "job_id": self.job_id,
            "state": r.state,
            "exit_code": r.exit_code,
            "error": r.error,
            "oom_killed": r.oom_killed,
            "image": r.image,
            "created_at": rfc3339(r.created_at),
            "started_at": r.started_at.map(rfc3339),
            "completed_at": r.completed_at.map(rfc3339),
            "duration_seconds": r.duration.map(|d| d.as_secs_f64()),
            "stdout_truncated": r.truncated[0],
            "stderr_truncated": r.truncated[1],
            "output_bytes": r.total,
        })
    }

    /// The seed's answer to `POST /jobs/execute`, plus berth's fields.
    pub(crate) fn seed_answer(&self) -> Value {
        let mut view = self.view();
        let (state, exit_code) = {
            let r = self.record();
            (r.state, r.exit_code)
        };
        view["success"] = (state == JobState::Succeeded).into();
        view["exit_code"] = exit_code.into();
        view["stdout"] = self.kept_text(Stream::Stdout).into();
        view["stderr"] = self.kept_text(Stream::Stderr).into();
        view
    }

    /// The last line of a logs stream: where the job is and the offset to resume from.
    pub(crate) fn end_line(&self) -> Value {
        let r = self.record();
        serde_json::json!({
            "state": r.state,
            "exit_code": r.exit_code,
            "error": r.error,
            "oom_killed": r.oom_killed,
            "stdout_truncated": r.truncated[0],
            "stderr_truncated": r.truncated[1],
            "next_offset": r.total,
        })
    }
}
