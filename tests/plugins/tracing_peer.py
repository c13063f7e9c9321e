"""A real Jaeger (v2 all-in-one, built by tools/peers/jaeger.sh) for the tracing plugin tests.

Each test module starts its own Jaeger on free loopback ports: OTLP/HTTP and Zipkin
receivers, in-memory storage, the query API (``/api/traces``) that the tests poll with a
bounded wait.  Nothing is left running: the process is stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gwtools import free_port

VERSION = os.environ.get("JAEGER_VERSION", "v1.75.0")
PEERS = Path(os.environ.get("MESHGATE_PEERS", str(Path.home() / ".cache" / "meshgate" / "peers")))
BINARY = PEERS / f"jaeger-{VERSION}" / "jaeger"

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, zipkin]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
  zipkin:
    endpoint: 127.0.0.1:{zipkin}
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"""


class Jaeger:
    def __init__(self, tmp: Path) -> None:
        self.query, self.query_grpc, self.otlp, self.zipkin = free_port(), free_port(), free_port(), free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = tmp / "jaeger.yaml"
        cfg.write_text(CONFIG.format(query=self.query, query_grpc=self.query_grpc, otlp=self.otlp,
                                     zipkin=self.zipkin))
        self.log_path = tmp / "jaeger.log"
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(BINARY), "--config", str(cfg)], stdout=self._logf,
                                     stderr=subprocess.STDOUT, cwd=tmp)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jaeger exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/api/services")
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"jaeger did not start:\n{self.log()}")

    @property
    def zipkin_url(self) -> str:
        return f"http://127.0.0.1:{self.zipkin}/api/v2/spans"

    @property
    def otlp_address(self) -> str:
        return f"127.0.0.1:{self.otlp}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.query}{path}", timeout=5) as r:
            return json.loads(r.read())

    def trace_or_none(self, trace_id: str) -> dict[str, Any] | None:
        try:
            data = self.get(f"/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return data[0] if data else None

    async def wait_trace(self, trace_id: str, *, spans: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        """The trace once Jaeger holds at least ``spans`` spans of it (bounded polling)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(self.trace_or_none, trace_id)
            if last is not None and len(last["spans"]) >= spans:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"trace {trace_id} not in jaeger after {timeout}s (last: {last})\n{self.log()[-3000:]}")

    async def traces(self, service: str) -> list[dict[str, Any]]:
        return list((await asyncio.to_thread(self.get, f"/api/traces?service={service}&limit=100"))["data"] or [])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


def by_name(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["operationName"]: s for s in trace["spans"]}


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def parent_of(span: dict[str, Any]) -> str | None:
    refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def service_of(trace: dict[str, Any], span: dict[str, Any]) -> str:
    return str(trace["processes"][span["processID"]]["serviceName"])
