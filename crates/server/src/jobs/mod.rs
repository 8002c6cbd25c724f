//! The jobs: a table of records, a FIFO queue in front of `max_concurrent_jobs` slots, each
//! job run in its own environment, its output kept (capped) and streamed to followers, and
//! the drain.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use berth_engine_core::{ContainerEngine, ErrorKind, ExecRequest, SessionId, Workspace};
use berth_runner::config::BerthConfig;
use berth_runner::lifecycle::{self, StartProgress};
use berth_runner::session::Session;
use berth_runner::spec::{self, EnvOptions};
use tokio::sync::{watch, Notify, Semaphore};

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::request::JobRequest;
use crate::source;

mod job;

pub use job::JobState;
use job::{lock, Ending, Record};
pub(crate) use job::{Entry, Job, Stream};

/// Label on every environment a server starts: the server instance's id.
pub const LABEL_SERVER: &str = "berth.dev/server";

/// The table of jobs and the counts the queue is judged by.
#[derive(Debug, Default)]
struct Table {
    jobs: BTreeMap<u64, Arc<Job>>,
    ids: HashMap<String, u64>,
    next_seq: u64,
    queued: u64,
    running: u64,
    /// Job tasks not yet ended.
    active: u64,
    draining: bool,
}

/// The job manager.
pub(crate) struct Jobs {
    config: Arc<BerthConfig>,
    engine: Arc<dyn ContainerEngine>,
    pub(crate) metrics: Arc<Metrics>,
    instance: String,
    table: Mutex<Table>,
    slots: Arc<Semaphore>,
    idle: Notify,
}

impl Jobs {
    pub(crate) fn new(
        config: Arc<BerthConfig>,
        engine: Arc<dyn ContainerEngine>,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Self {
        let slots = usize::try_from(config.server.max_concurrent_jobs).unwrap_or(usize::MAX);
        Self {
            config,
            engine,
            metrics,
            instance,
            table: Mutex::new(Table::default()),
            slots: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
            idle: Notify::new(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// (running, queued).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let t = self.table();
        (t.running, t.queued)
    }

    pub(crate) fn draining(&self) -> bool {
        self.table().draining
    }

    /// Drops the records of jobs that ended longer than `server.job_retention` ago.
    fn sweep(&self, table: &mut Table) {
        let retention = self.config.server.job_retention.get();
        let expired: Vec<u64> = table
            .jobs
            .iter()
            .filter(|(_, j)| j.record().ended.is_some_and(|e| e.elapsed() >= retention))
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            if let Some(job) = table.jobs.remove(&seq) {
                table.ids.remove(&job.id);
            }
        }
    }

    /// Queues a job, or refuses it (draining, queue full).
    pub(crate) fn submit(self: &Arc<Self>, req: JobRequest) -> Result<Arc<Job>, ServerError> {
        let image = spec::image_or_default(&self.config, req.image.clone()).map_err(|e| {
            ServerError::bad(
                "docker_image",
                format!("{e} (no docker_image given and runner.image is unset)"),
            )
        })?;
        let server = &self.config.server;
        let job = {
            let mut t = self.table();
            if t.draining {
                return Err(ServerError::Draining);
            }
            self.sweep(&mut t);
            if t.queued + t.running >= server.max_queued_jobs + server.max_concurrent_jobs {
                return Err(ServerError::QueueFull {
                    queued: t.queued,
                    retry_after: 1 + t.queued / server.max_concurrent_jobs.max(1),
                });
            }
            let seq = t.next_seq;
            t.next_seq += 1;
            let id = SessionId::generate().to_string();
            let job = Arc::new(Job {
                id: id.clone(),
                job_id: req.job_id.clone(),
                record: Mutex::new(Record {
                    state: JobState::Queued,
                    exit_code: None,
                    error: None,
                    oom_killed: false,
                    image: image.to_string(),
                    created_at: SystemTime::now(),
                    started_at: None,
                    started: None,
                    completed_at: None,
                    duration: None,
                    ended: None,
                    kept: Vec::new(),
                    kept_bytes: [0; 2],
                    truncated: [false; 2],
                    total: 0,
                    followers: Vec::new(),
                    next_follower: 0,
                    cancel_reason: None,
                }),
                cancel: watch::channel(false).0,
                done: watch::channel(false).0,
            });
            t.jobs.insert(seq, job.clone());
            t.ids.insert(id, seq);
            t.queued += 1;
            t.active += 1;
            self.metrics.queued.set(t.queued as i64);
            job
        };
        tracing::debug!(job = %job.id, image = %image, "job queued");
        let jobs = self.clone();
        let task_job = job.clone();
        tokio::spawn(async move { jobs.run(task_job, req, image).await });
        Ok(job)
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Job>, ServerError> {
        let mut t = self.table();
        self.sweep(&mut t);
        t.ids
            .get(id)
            .and_then(|s| t.jobs.get(s))
            .cloned()
            .ok_or_else(|| ServerError::JobNotFound { id: id.to_owned() })
    }

    /// Up to `limit` jobs after the job `after` (oldest first), and whether more follow.
    pub(crate) fn page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Arc<Job>>, bool), ServerError> {
        let mut t = self.table();
        self.sweep(&mut t);
        let start = match after {
            Some(id) => match t.ids.get(id) {
                Some(seq) => seq + 1,
                None => {
                    return Err(ServerError::bad(
                        "after",
                        format!("no job {id} (unknown or expired)"),
                    ))
                }
            },
            None => 0,
        };
        let mut page: Vec<Arc<Job>> = t
            .jobs
            .range(start..)
            .take(limit + 1)
            .map(|(_, j)| j.clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    async fn run(
        self: Arc<Self>,
        job: Arc<Job>,
        req: JobRequest,
        image: berth_engine_core::ImageRef,
    ) {
        // FIFO: tokio's semaphore hands out permits in the order they were asked for.
        let permit = tokio::select! {
            biased;
            () = job.cancelled() => None,
            p = self.slots.clone().acquire_owned() => p.ok(),
        };
        {
            let mut t = self.table();
            t.queued -= 1;
            self.metrics.queued.set(t.queued as i64);
            if permit.is_some() {
                t.running += 1;
                self.metrics.running.set(t.running as i64);
            }
        }
        let ending = match &permit {
            None => Ending::of(
                JobState::Cancelled,
                self.cancel_reason(&job, "cancelled while queued"),
            ),
            Some(_) => {
                {
                    let mut r = job.record();
                    r.state = JobState::Running;
                    r.started_at = Some(SystemTime::now());
                    r.started = Some(Instant::now());
                }
                tracing::debug!(job = %job.id, "job started");
                self.execute(&job, req, image).await
            }
        };
        self.finish(&job, ending);
        let mut t = self.table();
        if permit.is_some() {
            t.running -= 1;
            self.metrics.running.set(t.running as i64);
        }
        t.active -= 1;
        drop(permit);
        drop(t);
        self.idle.notify_waiters();
    }

    fn cancel_reason(&self, job: &Job, default: &str) -> String {
        job.record()
            .cancel_reason
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }

    fn finish(&self, job: &Job, ending: Ending) {
        let (took, state, exit_code) = {
            let mut r = job.record();
            r.state = ending.state;
            r.exit_code = ending.exit_code;
            r.error = ending.error;
            r.oom_killed = ending.oom_killed;
            r.completed_at = Some(SystemTime::now());
            r.duration = r.started.map(|s| s.elapsed());
            r.ended = Some(Instant::now());
            // Dropping the senders ends every follower's stream.
            r.followers.clear();
            (r.duration, r.state, r.exit_code)
        };
        self.metrics.job_finished(state.as_str(), took);
        tracing::info!(
            job = %job.id,
            state = state.as_str(),
            exit_code = exit_code,
            duration_seconds = took.map(|d| d.as_secs_f64()),
            "job ended"
        );
        job.done.send_replace(true);
    }

    /// Runs the job in an environment of its own, removed at the end whatever happened.
    async fn execute(
        &self,
        job: &Arc<Job>,
        req: JobRequest,
        image: berth_engine_core::ImageRef,
    ) -> Ending {
        let session_id = match SessionId::new(job.id.clone()) {
            Ok(s) => s,
            Err(e) => return Ending::of(JobState::Failed, e.to_string()),
        };
        let options = EnvOptions::named("job")
            .with_image(Some(image))
            .with_session(Some(session_id));
        let mut spec = match spec::environment_spec(&self.config, &options) {
            Ok(s) => s,
            Err(e) => return Ending::of(JobState::Failed, format!("invalid job environment: {e}")),
        };
        if let Some(cpu) = req.cpu_millis {
            spec.resources.cpu_millis = Some(cpu);
        }
        if let Some(memory) = req.memory_bytes {
            spec.resources.memory_bytes = Some(memory);
        }
        spec.labels
            .insert(LABEL_SERVER.to_owned(), self.instance.clone());
        // The session adds this process as the owner, so `berth gc` removes the environment
        // after a crash of the server.
        let session = Session::new(self.engine.clone(), spec);
        // A start runs to its end even when the job is cancelled meanwhile: dropping it half
        // way could leave a container the session never learned of.
        let started = lifecycle::start(
            &session,
            "job",
            self.config.runner.pull_policy,
            &StartProgress::none(),
        )
        .await;
        let ending = match started {
            Err(e) => {
                self.metrics.engine_error();
                Ending::of(
                    JobState::Failed,
                    format!("could not start the job's environment: {e}"),
                )
            }
            Ok(_) if job.is_cancelled() => {
                Ending::of(JobState::Cancelled, self.cancel_reason(job, "cancelled"))
            }
            Ok(env) => {
                let run = self.run_command(job, &session, &env, req);
                tokio::select! {
                    ending = run => ending,
                    // Dropping the running command kills its process tree; the environment
                    // goes next.
                    () = job.cancelled() => Ending::of(JobState::Cancelled, self.cancel_reason(job, "cancelled")),
                }
            }
        };
        if let Err(e) = session.shutdown().await {
            self.metrics.engine_error();
            tracing::warn!(job = %job.id, error = %e, "could not remove the job's environment");
            let mut ending = ending;
            let note = format!("the job's environment could not be removed: {e}");
            ending.error = Some(match ending.error {
                Some(first) => format!("{first}; {note}"),
                None => note,
            });
            return ending;
        }
        ending
    }

    async fn run_command(
        &self,
        job: &Job,
        session: &Session,
        env: &berth_engine_core::EnvironmentId,
        req: JobRequest,
    ) -> Ending {
        let mount = session.template().mount_path.clone();
        // The job's timeout covers its checkout too: a repository that never finishes
        // sending is a timed-out job, not a job that hangs.
        let started = std::time::Instant::now();
        let timed_out = |what: &str| {
            Ending::of(
                JobState::TimedOut,
                format!("timed out after {}s {what}", req.timeout.as_secs_f64()),
            )
        };
        if let Some(source) = &req.source {
            let copy = self.copy_source(session, env, source, &mount);
            match tokio::time::timeout(req.timeout, copy).await {
                Err(_) => return timed_out("while checking out git_url"),
                Ok(Err(e)) => return Ending::of(JobState::Failed, e),
                Ok(Ok(())) => {}
            }
        }
        let left = req.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return timed_out("while checking out git_url");
        }
        let mut exec = ExecRequest::new(req.argv).with_timeout(left);
        exec.env = req.env;
        if req.source.is_some() || session.template().workspace != Workspace::None {
            exec = exec.with_workdir(mount);
        }
        let mut process = match self.engine.exec_streaming(env, exec).await {
            Ok(p) => p,
            Err(e) => return self.engine_failure("could not start the command", &e),
        };
        let cap = self.config.server.max_output_bytes.bytes();
        if let Some(mut output) = process.take_output() {
            while let Some(chunk) = output.next_chunk().await {
                job.push(chunk, cap).await;
            }
        }
        match process.wait_outcome().await {
            Ok(outcome) => {
                let code = outcome.status.code();
                match outcome.oom {
                    Some(oom) => Ending {
                        state: JobState::Failed,
                        exit_code: Some(code),
                        error: Some(oom.message()),
                        oom_killed: true,
                    },
                    None => Ending {
                        state: if code == 0 {
                            JobState::Succeeded
                        } else {
                            JobState::Failed
                        },
                        exit_code: Some(code),
                        error: None,
                        oom_killed: false,
                    },
                }
            }
            Err(e) if e.kind() == ErrorKind::Timeout => Ending::of(
                JobState::TimedOut,
                format!("timed out after {}s: {e}", req.timeout.as_secs_f64()),
            ),
            Err(e) => self.engine_failure("lost the command's outcome", &e),
        }
    }

    fn engine_failure(&self, what: &str, e: &berth_engine_core::Error) -> Ending {
        self.metrics.engine_error();
        let why = match e.kind() {
            ErrorKind::ConnectionLost | ErrorKind::Unavailable => {
                "the connection to the engine was lost"
            }
            ErrorKind::EnvironmentGone => "the job's environment disappeared",
            _ => "the engine failed",
        };
        Ending::of(JobState::Failed, format!("{what}: {why}: {e}"))
    }

    /// Checks the job's repository out on the agent and copies it into the workspace.
    async fn copy_source(
        &self,
        session: &Session,
        env: &berth_engine_core::EnvironmentId,
        source: &source::JobSource,
        mount: &str,
    ) -> Result<(), String> {
        let dir = source::checkout(source)
            .await
            .map_err(|e| format!("checkout failed: {e}"))?;
        let engine = session.engine();
        // The mount path exists only with a workspace; make it either way.
        let mkdir = ExecRequest::new(["mkdir", "-p", mount]);
        engine
            .exec(env, mkdir)
            .await
            .map_err(|e| format!("could not make {mount}: {e}"))?;
        let contents = dir.path().join(".");
        // pack_path looks at the tree before it streams (a stat, a directory read): not on a
        // runtime worker.
        let tar = tokio::task::spawn_blocking(move || berth_runner::archive::pack_path(&contents))
            .await
            .map_err(|e| format!("could not pack the checkout: {e}"))?
            .map_err(|e| format!("could not pack the checkout: {e}"))?;
        engine
            .copy_in(env, mount, tar)
            .await
            .map_err(|e| format!("could not copy the checkout into {mount}: {e}"))
    }

    /// Stops taking jobs, cancels the queued ones, lets the running ones go on until
    /// `drain_timeout` or `cancel_now`, cancels them, and returns once every job has ended
    /// (and so every environment is removed).
    pub(crate) async fn drain(&self, mut cancel_now: watch::Receiver<bool>) {
        let jobs: Vec<Arc<Job>> = {
            let mut t = self.table();
            t.draining = true;
            t.jobs.values().cloned().collect()
        };
        tracing::info!("draining: no new jobs; queued jobs cancelled");
        for job in jobs.iter().filter(|j| j.state() == JobState::Queued) {
            job.cancel("cancelled: the server shut down before the job started");
        }
        let deadline = tokio::time::sleep(self.config.server.drain_timeout.get());
        tokio::pin!(deadline);
        let reason = tokio::select! {
            () = self.wait_idle() => None,
            () = &mut deadline => Some("cancelled: the server shut down (server.drain_timeout elapsed)"),
            _ = cancel_now.wait_for(|c| *c) => Some("cancelled: the server shut down at once (second signal)"),
        };
        if let Some(reason) = reason {
            let jobs: Vec<Arc<Job>> = self.table().jobs.values().cloned().collect();
            for job in jobs {
                job.cancel(reason);
            }
            self.wait_idle().await;
        }
        tracing::info!("drained: every job ended and every environment is removed");
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.table().active == 0 {
                return;
            }
            notified.await;
        }
    }
}
