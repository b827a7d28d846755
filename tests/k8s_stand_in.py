"""A loopback stand-in for the Kubernetes API server, for tests that talk to a cluster.

No Kubernetes API server can run on these machines, so the deploy and launch code talks HTTP to this
small server, which speaks the few REST calls they make (server-side apply PATCH, GET, DELETE) and plays
the controllers' part by reporting status: a Deployment or InferenceService turns ready, and a TrainJob
or PyTorchJob runs and then completes (or fails, when a test asks), after ``ready_after`` GETs. The real
``kubernetes`` client does every request, so paths, headers, bodies and error handling are exercised
end to end.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class FakeApiServer:
    """Objects by REST path; a Deployment/InferenceService turns ready, and a job finishes (Complete /
    Succeeded, or Failed with ``job_failure``'s reason and message), after ``ready_after`` GETs (None: never)."""

    def __init__(self, ready_after: int | None = 1, deny: bool = False,
                 job_failure: tuple[str, str] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.ready_after = ready_after
        self.deny = deny
        self.job_failure = job_failure
        self.gets: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                      "content_type": self.headers.get("Content-Type"), "body": body})
                if fake.deny:
                    return self._reply(403, {"kind": "Status", "reason": "Forbidden", "code": 403})
                code, reply = fake.handle(self.command, url.path, body)
                self._reply(code, reply)

            do_GET = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for the serving loop to look.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        not_found = {"kind": "Status", "reason": "NotFound", "code": 404}
        if method == "PATCH":
            old = self.objects.get(path, {})
            generation = old.get("metadata", {}).get("generation", 0) + 1
            self.objects[path] = {**body, "metadata": {**body["metadata"], "generation": generation}}
            return 200, self.objects[path]
        if method == "DELETE":
            return (200, self.objects.pop(path)) if path in self.objects else (404, not_found)
        if path.endswith("/services/t1-predictor"):  # what KServe creates for an InferenceService
            if path.replace("/api/v1/", "/apis/serving.kserve.io/v1beta1/").replace(
                    "/services/t1-predictor", "/inferenceservices/t1") not in self.objects:
                return 404, not_found
            return 200, {"kind": "Service", "spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 8081, "targetPort": 8081}]}}
        if path not in self.objects:
            return 404, not_found
        obj = self.objects[path]
        self.gets[path] = self.gets.get(path, 0) + 1
        ready = self.ready_after is not None and self.gets[path] > self.ready_after
        if obj["kind"] == "Deployment":
            status = {"observedGeneration": obj["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
                      "readyReplicas": int(ready), "availableReplicas": int(ready),
                      "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                                      "message": "pod waiting: ImagePullBackOff"}]}
        elif obj["kind"] == "InferenceService":
            status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                      "reason": None if ready else "ModelLoading", "message": None}],
                      "address": {"url": "http://t1-predictor.ns1.svc.cluster.local"}}
        elif obj["kind"] == "TrainJob":
            status = self._trainjob_status(obj, ready)
        elif obj["kind"] == "PyTorchJob":
            status = self._pytorchjob_status(obj, ready)
        else:
            status = {}
        return 200, {**obj, "status": status}

    def _trainjob_status(self, obj: dict[str, Any], done: bool) -> dict[str, Any]:
        """What the Trainer copies from the JobSet: the child Jobs' counts, then Complete or Failed."""
        nodes = obj["spec"]["trainer"]["numNodes"]
        counts = {"name": "node", "active": nodes, "ready": nodes, "succeeded": 0, "failed": 0, "suspended": 0}
        if not done:
            return {"jobsStatus": [counts]}
        if self.job_failure:
            reason, message = self.job_failure
            return {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}],
                    "jobsStatus": [{**counts, "active": 0, "ready": 0, "failed": 1}]}
        return {"conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
                                "message": "jobset completed successfully"}],
                "jobsStatus": [{**counts, "active": 0, "ready": 0, "succeeded": nodes}]}

    def _pytorchjob_status(self, obj: dict[str, Any], done: bool) -> dict[str, Any]:
        """The training operator's conditions (Created, Running, then Succeeded or Failed) and pod counts."""
        replicas = {name: spec["replicas"] for name, spec in obj["spec"]["pytorchReplicaSpecs"].items()}
        conditions = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated", "message": "created"},
                      {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "running"}]
        if not done:
            return {"conditions": conditions, "replicaStatuses": {k: {"active": n} for k, n in replicas.items()}}
        conditions[1]["status"] = "False"
        if self.job_failure:
            reason, message = self.job_failure
            return {"conditions": [*conditions, {"type": "Failed", "status": "True", "reason": reason,
                                                 "message": message}],
                    "replicaStatuses": {k: {"failed": n} for k, n in replicas.items()}}
        return {"conditions": [*conditions, {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded",
                                             "message": "PyTorchJob successfully completed."}],
                "replicaStatuses": {k: {"succeeded": n} for k, n in replicas.items()}}

    def client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def sent(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]


@contextlib.contextmanager
def serving(**options: Any) -> Iterator[FakeApiServer]:
    """A FakeApiServer answering on loopback for the ``with`` block."""
    server = FakeApiServer(**options)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
