"""The official Python `kubernetes` client against the simulator, as a second independent client.

Usage: client_check.py KUBECONFIG IMAGE

Creates a Job, waits on a watch for its pod to run, execs over v5 and v4 (exit code 3 with
stdout and stderr apart, stdin, and on v5 stdin closed so the command sees EOF), follows the
pod's logs, and deletes the Job with foreground propagation, waiting until the Job and its pod
are gone. Prints one line per step; any mismatch raises, so the exit code is non-zero.
"""

import sys
import time
import uuid

from kubernetes import client, config, watch
from kubernetes.stream import stream

NS = "default"


def step(msg):
    print(f"ok: {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def run_exec(core, pod, command, protocol, stdin=None, close_stdin=False):
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        NS,
        command=command,
        stdin=stdin is not None,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
        _headers=headers,
    )
    if stdin is not None:
        # A str goes out in a websocket text frame, as write_stdin("...") does.
        resp.write_stdin(stdin)
        if close_stdin:
            resp.close_channel(0)
    resp.run_forever(timeout=60)
    check(not resp.is_open(), f"{command}: the exec did not end within 60 s")
    return resp.subprotocol, resp.read_stdout(), resp.read_stderr(), resp.returncode


def main():
    kubeconfig, image = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    batch = client.BatchV1Api()

    version = client.VersionApi().get_code()
    check(version.git_version == "v1.33.0", f"server version {version.git_version}")
    step(f"server {version.git_version}")

    name = f"py-{uuid.uuid4().hex[:8]}"
    script = "echo started; i=0; while [ $i -lt 3 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done; sleep 600"
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={"suite": "python"}),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"suite": "python"}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[
                        client.V1Container(
                            name="main",
                            image=image,
                            command=["sh", "-c", script],
                            resources=client.V1ResourceRequirements(requests={"cpu": "100m"}),
                        )
                    ],
                ),
            ),
        ),
    )
    created = batch.create_namespaced_job(NS, job)
    check(created.metadata.uid, "the created job has a uid")
    step(f"created job {name}")

    selector = f"job-name={name}"
    pod = None
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, NS, label_selector=selector, timeout_seconds=90):
        p = event["object"]
        if p.status.phase == "Running":
            pod = p
            w.stop()
    check(pod is not None, "the pod did not run within 90 s")
    check(pod.spec.service_account_name == "default", f"serviceAccountName {pod.spec.service_account_name}")
    step(f"pod {pod.metadata.name} running")
    pod_name = pod.metadata.name

    failing = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    for protocol, expected in [(None, "v5.channel.k8s.io"), ("v4.channel.k8s.io", "v4.channel.k8s.io")]:
        got, out, err, code = run_exec(core, pod_name, failing, protocol)
        check(got == expected, f"negotiated {got}, wanted {expected}")
        check((out, err, code) == ("out\n", "err\n", 3), f"{expected}: stdout {out!r} stderr {err!r} exit {code}")
        step(f"exec over {got}: exit 3, stdout and stderr apart")

    got, out, err, code = run_exec(core, pod_name, ["cat"], None, stdin="hello\nworld\n", close_stdin=True)
    check(got == "v5.channel.k8s.io", got)
    check((out, code) == ("hello\nworld\n", 0), f"cat over v5: stdout {out!r} stderr {err!r} exit {code}")
    step("exec over v5: stdin in text frames, closed: cat saw EOF")
    # v4 cannot close stdin alone; a command that stops at the first line shows stdin arrives.
    got, out, err, code = run_exec(core, pod_name, ["head", "-n", "1"], "v4.channel.k8s.io", stdin="first\nsecond\n")
    check((got, out, code) == ("v4.channel.k8s.io", "first\n", 0), f"head over v4: {got} {out!r} {err!r} {code}")
    step("exec over v4: stdin in text frames")

    lines = []
    w = watch.Watch()
    deadline = time.time() + 60
    for line in w.stream(core.read_namespaced_pod_log, name=pod_name, namespace=NS, follow=True):
        lines.append(line)
        if line == "tick 2" or time.time() > deadline:
            w.stop()
    check(lines[:4] == ["started", "tick 0", "tick 1", "tick 2"], f"followed logs {lines}")
    step("logs followed")

    batch.delete_namespaced_job(name, NS, propagation_policy="Foreground")
    deadline = time.time() + 60
    while time.time() < deadline:
        jobs = batch.list_namespaced_job(NS, field_selector=f"metadata.name={name}").items
        pods = core.list_namespaced_pod(NS, label_selector=selector).items
        if not jobs and not pods:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"after a foreground delete: jobs {len(jobs)}, pods {len(pods)} left")
    step("deleted with foreground propagation: job and pod gone")


if __name__ == "__main__":
    main()
