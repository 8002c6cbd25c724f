//! `ContainerEngine` through `Arc<T>` and `Box<T>`, as tower does for its core trait, so an
//! embedder can wrap an engine (logging, metrics, fault injection) and stay an engine.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentStatus, ExecOutput, ExecProcess, ExecRequest, ImageInfo, ImageRef, LabelSelector,
    LogOptions, LogStream, Network, PoolClaim, PoolSpec, PortStream, Progress, PullPolicy,
    RemoveOutcome, Result, RunId, RunSpec, RunStatus, StopOutcome, TarStream, VolumeStatus,
};

/// Forwards every method, defaults included, to the engine behind a pointer, so a wrapper
/// (logging, metrics, a fault injector) can hold `Arc<E>` or `Box<dyn ContainerEngine>` and
/// be an engine itself.
macro_rules! forward_container_engine {
    ($($pointer:ident),+) => {$(
        #[async_trait]
        impl<T: ContainerEngine + ?Sized> ContainerEngine for $pointer<T> {
            fn backend(&self) -> BackendKind {
                (**self).backend()
            }
            async fn init(&self) -> Result<EngineInfo> {
                (**self).init().await
            }
            async fn ensure_image(
                &self,
                image: &ImageRef,
                policy: PullPolicy,
                progress: &Progress,
            ) -> Result<ImageInfo> {
                (**self).ensure_image(image, policy, progress).await
            }
            async fn build_image(&self, build: BuildSpec, progress: &Progress) -> Result<ImageInfo> {
                (**self).build_image(build, progress).await
            }
            async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
                (**self).start(spec).await
            }
            async fn exec_streaming(
                &self,
                env: &EnvironmentId,
                req: ExecRequest,
            ) -> Result<ExecProcess> {
                (**self).exec_streaming(env, req).await
            }
            async fn exec(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecOutput> {
                (**self).exec(env, req).await
            }
            async fn run_once(
                &self,
                spec: &EnvironmentSpec,
                req: ExecRequest,
            ) -> Result<(EnvironmentId, ExecProcess)> {
                (**self).run_once(spec, req).await
            }
            async fn exec_as_user(
                &self,
                env: &EnvironmentId,
                user: &str,
                req: ExecRequest,
            ) -> Result<ExecOutput> {
                (**self).exec_as_user(env, user, req).await
            }
            async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()> {
                (**self).copy_in(env, dest, tar).await
            }
            async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream> {
                (**self).copy_out(env, path).await
            }
            async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome> {
                (**self).stop(env).await
            }
            async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
                (**self).mark_detached(env).await
            }
            async fn set_network(&self, env: &EnvironmentId, network: &Network) -> Result<()> {
                (**self).set_network(env, network).await
            }
            async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
                (**self).list(selector).await
            }
            async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
                (**self).list_volumes(selector).await
            }
            async fn remove_volume(&self, name: &str) -> Result<RemoveOutcome> {
                (**self).remove_volume(name).await
            }
            async fn submit_run(&self, spec: &RunSpec) -> Result<RunId> {
                (**self).submit_run(spec).await
            }
            async fn run_status(&self, run: &RunId) -> Result<RunStatus> {
                (**self).run_status(run).await
            }
            async fn run_logs(&self, run: &RunId, options: LogOptions) -> Result<LogStream> {
                (**self).run_logs(run, options).await
            }
            async fn list_runs(&self, selector: &LabelSelector) -> Result<Vec<RunStatus>> {
                (**self).list_runs(selector).await
            }
            async fn cancel_run(&self, run: &RunId) -> Result<()> {
                (**self).cancel_run(run).await
            }
            async fn remove_run(&self, run: &RunId) -> Result<StopOutcome> {
                (**self).remove_run(run).await
            }
            async fn connect_port(&self, env: &EnvironmentId, port: u16) -> Result<PortStream> {
                (**self).connect_port(env, port).await
            }
            async fn start_pool_member(&self, pool: &PoolSpec) -> Result<EnvironmentId> {
                (**self).start_pool_member(pool).await
            }
            async fn list_pool_members(&self, pool: &str) -> Result<Vec<EnvironmentStatus>> {
                (**self).list_pool_members(pool).await
            }
            async fn claim_pool_member(&self, claim: &PoolClaim) -> Result<Option<EnvironmentId>> {
                (**self).claim_pool_member(claim).await
            }
        }
    )+};
}

forward_container_engine!(Arc, Box);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend, Error, ExitStatus, OutputChunk};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An engine that answers `exec` and `mark_detached` itself (overriding the defaults) and
    /// refuses the rest, counting calls.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
    }

    impl Fake {
        fn refuse<T>(&self, operation: &'static str) -> Result<T> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Unsupported {
                backend: BackendKind::Docker,
                operation,
                reason: "a fake".into(),
            })
        }
    }

    #[async_trait]
    impl ContainerEngine for Fake {
        fn backend(&self) -> BackendKind {
            BackendKind::Docker
        }
        async fn init(&self) -> Result<EngineInfo> {
            self.refuse("init")
        }
        async fn ensure_image(
            &self,
            _: &ImageRef,
            _: PullPolicy,
            _: &Progress,
        ) -> Result<ImageInfo> {
            self.refuse("ensure_image")
        }
        async fn build_image(&self, _: BuildSpec, _: &Progress) -> Result<ImageInfo> {
            self.refuse("build_image")
        }
        async fn start(&self, _: &EnvironmentSpec) -> Result<EnvironmentId> {
            self.refuse("start")
        }
        async fn exec_streaming(&self, _: &EnvironmentId, _: ExecRequest) -> Result<ExecProcess> {
            self.refuse("exec_streaming")
        }
        async fn exec(&self, _: &EnvironmentId, req: ExecRequest) -> Result<ExecOutput> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            backend::spawn(None, |sink| async move {
                sink.send(OutputChunk::Stdout(req.argv.join(" ").into()))
                    .await;
                Ok(ExitStatus(0))
            })
            .collect(64)
            .await
        }
        async fn copy_in(&self, _: &EnvironmentId, _: &str, _: TarStream) -> Result<()> {
            self.refuse("copy_in")
        }
        async fn copy_out(&self, _: &EnvironmentId, _: &str) -> Result<TarStream> {
            self.refuse("copy_out")
        }
        async fn stop(&self, _: &EnvironmentId) -> Result<StopOutcome> {
            self.refuse("stop")
        }
        async fn mark_detached(&self, _: &EnvironmentId) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn list(&self, _: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
            self.refuse("list")
        }
        async fn list_volumes(&self, _: &LabelSelector) -> Result<Vec<VolumeStatus>> {
            self.refuse("list_volumes")
        }
        async fn remove_volume(&self, _: &str) -> Result<RemoveOutcome> {
            self.refuse("remove_volume")
        }
        async fn claim_pool_member(&self, _: &PoolClaim) -> Result<Option<EnvironmentId>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Some(EnvironmentId::new("claimed")?))
        }
    }

    fn boxed_again(fake: &Arc<Fake>) -> Box<dyn ContainerEngine> {
        Box::new(fake.clone())
    }

    /// A wrapper an embedder might write: it holds any engine and is one.
    struct Counted<E>(E);

    #[async_trait]
    impl<E: ContainerEngine> ContainerEngine for Counted<E> {
        fn backend(&self) -> BackendKind {
            self.0.backend()
        }
        async fn init(&self) -> Result<EngineInfo> {
            self.0.init().await
        }
        async fn ensure_image(
            &self,
            i: &ImageRef,
            p: PullPolicy,
            g: &Progress,
        ) -> Result<ImageInfo> {
            self.0.ensure_image(i, p, g).await
        }
        async fn build_image(&self, b: BuildSpec, g: &Progress) -> Result<ImageInfo> {
            self.0.build_image(b, g).await
        }
        async fn start(&self, s: &EnvironmentSpec) -> Result<EnvironmentId> {
            self.0.start(s).await
        }
        async fn exec_streaming(&self, e: &EnvironmentId, r: ExecRequest) -> Result<ExecProcess> {
            self.0.exec_streaming(e, r).await
        }
        async fn exec(&self, e: &EnvironmentId, r: ExecRequest) -> Result<ExecOutput> {
            self.0.exec(e, r).await
        }
        async fn copy_in(&self, e: &EnvironmentId, d: &str, t: TarStream) -> Result<()> {
            self.0.copy_in(e, d, t).await
        }
        async fn copy_out(&self, e: &EnvironmentId, p: &str) -> Result<TarStream> {
            self.0.copy_out(e, p).await
        }
        async fn stop(&self, e: &EnvironmentId) -> Result<StopOutcome> {
            self.0.stop(e).await
        }
        async fn list(&self, s: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
            self.0.list(s).await
        }
        async fn list_volumes(&self, s: &LabelSelector) -> Result<Vec<VolumeStatus>> {
            self.0.list_volumes(s).await
        }
        async fn mark_detached(&self, e: &EnvironmentId) -> Result<()> {
            self.0.mark_detached(e).await
        }
        async fn remove_volume(&self, n: &str) -> Result<RemoveOutcome> {
            self.0.remove_volume(n).await
        }
    }

    #[tokio::test]
    async fn arc_and_box_forward_every_call_overrides_included() {
        let fake = Arc::new(Fake::default());
        let env = EnvironmentId::new("env-1").unwrap();
        let boxed: Box<dyn ContainerEngine> = Box::new(fake.clone());
        let wrapped = Counted(Arc::new(boxed));
        assert_eq!(wrapped.backend(), BackendKind::Docker);
        let out = wrapped
            .exec(&env, ExecRequest::new(["echo", "hi"]))
            .await
            .unwrap();
        assert_eq!(
            out.stdout_lossy(),
            "echo hi",
            "the fake's own exec ran, not the default"
        );
        wrapped
            .mark_detached(&env)
            .await
            .expect("the fake's override, not the Unsupported default");
        let err = wrapped.stop(&env).await.unwrap_err();
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
        // A pool claim through `Arc<Box<dyn ..>>` reaches the engine's own claim, not the
        // Unsupported default (method resolution picks the pointer's impl first).
        let pointer: Arc<Box<dyn ContainerEngine>> = Arc::new(boxed_again(&fake));
        let claim = PoolClaim::new("p", "h", crate::SessionId::generate(), "main");
        let claimed = pointer.claim_pool_member(&claim).await.expect("forwarded");
        assert_eq!(claimed.map(|e| e.to_string()).as_deref(), Some("claimed"));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
    }
}
