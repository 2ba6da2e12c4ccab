"""Engines run tasks through workers and yield results as they finish (in any order).

- ``InProcessEngine``: one worker in this process.
- ``LocalEngine(n)``: ``n`` worker processes on this machine (spawned, one model each).
- ``RayEngine(address, workers, gpus_per_worker)``: one Ray actor per worker on a cluster.

Every engine runs the same ``Worker.process`` on one torch thread, so the records are
bit-identical whichever engine ran them. A worker that dies (killed, OOM-killed, segfault) is
replaced and its row retried, up to ``MAX_ATTEMPTS`` times; then the row is recorded as failed.
Closing the result generator (Ctrl-C) stops every worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from .rows import BatchError
from .worker import JobSpec, Worker, failed

MAX_ATTEMPTS = 3


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread (restored afterwards): the same reduction order in every
    engine, and no oversubscription when several workers share a machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _timed(result: dict[str, Any], sent: float) -> dict[str, Any]:
    """Add ``roundtrip``: seconds from handing the task over to having its result here;
    ``roundtrip - seconds`` is what the engine itself costs a prompt."""
    result["roundtrip"] = time.perf_counter() - sent
    return result


class _Feed:
    """Tasks from the runner plus retried ones (first)."""

    def __init__(self, tasks: Iterable[dict[str, Any]]):
        self.tasks = iter(tasks)
        self.retry: deque[dict[str, Any]] = deque()
        self.exhausted = False

    def next(self) -> dict[str, Any] | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted:
            return None
        task = next(self.tasks, None)
        self.exhausted = task is None
        return task

    @property
    def empty(self) -> bool:
        return self.exhausted and not self.retry


def _died(task: dict[str, Any], why: str, feed: _Feed) -> dict[str, Any] | None:
    """Requeue a dead worker's task, or its failure once it has used every attempt."""
    attempt = task.get("attempt", 1)
    if attempt >= MAX_ATTEMPTS:
        return failed(task, f"worker died on each of {attempt} attempts ({why})")
    feed.retry.appendleft({**task, "attempt": attempt + 1})
    return None


class InProcessEngine:
    """One worker, in this process. The loaded model is kept for the next run of the same
    model and options (an app or a notebook runs several prompt sets)."""

    name = "in-process"

    def __init__(self) -> None:
        self.deaths = 0
        self.workers = 1
        self._worker: Worker | None = None

    def pids(self) -> list[int]:
        return [os.getpid()]

    def _worker_for(self, spec: JobSpec) -> Worker:
        w = self._worker
        same = w is not None and (w.spec.model, w.spec.pipeline_options) == (
            spec.model,
            spec.pipeline_options,
        )
        if not same:
            self._worker = None
            self._worker = Worker(spec)
        self._worker.spec = spec
        return self._worker

    def run(self, spec: JobSpec, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        with one_thread():
            worker = self._worker_for(spec)
            for task in tasks:
                if task.get("error"):
                    yield failed(task, task["error"])
                    continue
                sent = time.perf_counter()
                yield _timed(worker.process(task), sent)


# ---------------------------------------------------------------------------------- local
def _worker_main(conn: Any, spec: JobSpec) -> None:  # pragma: no cover - runs in a child
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)
    try:
        worker = Worker(spec)
    except Exception as exc:
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if task is None:
            return
        conn.send(("result", worker.process(task)))


def _context() -> Any:
    """Workers fork from a fresh server process that has imported torch and unetviz once, so
    starting (or replacing) a worker costs a fork and a model load, not a torch import. Never
    a plain fork of this process: it may hold OpenMP threads a child would deadlock on."""
    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - not Linux
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "unetviz.batch.worker", "unetviz.pipelines"])
    return ctx


class _Proc:
    def __init__(self, ctx: Any, spec: JobSpec):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.task: dict[str, Any] | None = None
        self.sent = 0.0
        self.ready = False


class LocalEngine:
    """``n`` worker processes on this machine."""

    name = "local"

    def __init__(self, workers: int):
        if not 1 <= workers <= 256:
            raise BatchError(f"--workers {workers}: expected 1 to 256")
        self.workers = workers
        self.deaths = 0
        self._procs: list[_Proc] = []

    def pids(self) -> list[int]:
        """Worker process ids, busy ones first."""
        live = [p for p in self._procs if p.ready and p.proc.is_alive()]
        return [p.proc.pid for p in sorted(live, key=lambda p: p.task is None)]

    def run(self, spec: JobSpec, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        ctx = _context()
        feed = _Feed(tasks)
        self._procs = [_Proc(ctx, spec) for _ in range(self.workers)]
        try:
            while True:
                for p in self._procs:
                    while p.ready and p.task is None:
                        task = feed.next()
                        if task is None:
                            break
                        if task.get("error"):
                            yield failed(task, task["error"])
                            continue
                        p.conn.send(task)
                        p.task, p.sent = task, time.perf_counter()
                if feed.empty and not any(p.task for p in self._procs):
                    return
                yield from self._wait(ctx, spec, feed)
        finally:
            self._stop()

    def _wait(self, ctx: Any, spec: JobSpec, feed: _Feed) -> Iterator[dict[str, Any]]:
        by_obj = {}
        for p in self._procs:
            by_obj[p.conn] = p
            by_obj[p.proc.sentinel] = p
        for obj in wait(list(by_obj)):
            p = by_obj[obj]
            if p not in self._procs:
                continue  # already replaced in this round
            msg = None
            if obj is p.conn:
                try:
                    msg = p.conn.recv()
                except (EOFError, OSError):
                    msg = None
            if msg is None:
                if p.proc.is_alive() and obj is p.proc.sentinel:
                    continue
                yield from self._replace(ctx, spec, feed, p)
            elif msg[0] == "fatal":
                raise BatchError(f"the model could not be loaded in a worker: {msg[1]}")
            elif msg[0] == "ready":
                p.ready = True
            else:
                p.task = None
                yield _timed(msg[1], p.sent)

    def _replace(self, ctx: Any, spec: JobSpec, feed: _Feed, p: _Proc) -> Iterator[dict]:
        p.proc.join(timeout=5)
        code = p.proc.exitcode
        self.deaths += 1
        if self.deaths > MAX_ATTEMPTS * (self.workers + 8):
            raise BatchError(f"workers keep dying ({self.deaths} deaths, last exit code {code})")
        self._procs.remove(p)
        p.conn.close()
        if p.task is not None:
            res = _died(p.task, f"exit code {code}", feed)
            if res is not None:
                yield res
        self._procs.append(_Proc(ctx, spec))

    def _stop(self) -> None:
        for p in self._procs:
            with contextlib.suppress(OSError, ValueError):
                p.conn.send(None)
        for p in self._procs:
            p.proc.join(timeout=2)
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(timeout=2)
            p.conn.close()
        self._procs = []


# ---------------------------------------------------------------------------------- ray
def _actor_class(ray: Any) -> Any:
    class BatchActor:
        def __init__(self, spec: JobSpec):
            import torch

            torch.set_num_threads(1)
            self.worker = Worker(spec)

        def pid(self) -> int:
            return os.getpid()

        def process(self, task: dict[str, Any]) -> dict[str, Any]:
            return self.worker.process(task)

    return ray.remote(BatchActor)


class RayEngine:
    """One actor (one model) per worker on a Ray cluster: ``address`` is a cluster address,
    ``auto`` (the running cluster), or ``local`` (start one on this machine). A process that
    already called ``ray.init`` is used as it is."""

    name = "ray"

    def __init__(
        self,
        address: str = "auto",
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ):
        if workers is not None and not 1 <= workers <= 4096:
            raise BatchError(f"--workers {workers}: expected 1 to 4096")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise BatchError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
        self.address = address
        self.workers = workers
        self.gpus = gpus_per_worker
        self.cpus = cpus_per_worker
        self.deaths = 0
        self._pids: dict[Any, int] = {}
        self._busy: set[Any] = set()
        self._ray: Any = None
        self._owned = False

    def pids(self) -> list[int]:
        """Actor process ids (on their nodes), busy ones first."""
        return sorted(self._pids.values(), key=lambda pid: pid not in self._busy)

    def connect(self) -> None:
        """Reach the cluster now (``run`` would otherwise do it): an unreachable address is
        reported before anything is written."""
        if self._ray is None:
            self._ray, self._owned = self._connect()

    def _connect(self) -> tuple[Any, bool]:
        try:
            import ray
        except ImportError:
            raise BatchError(
                "--ray needs Ray: pip install 'unetviz[ray]' (or pip install ray)"
            ) from None
        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address == "local":
            kwargs["num_cpus"] = max(1, int((self.workers or 1) * self.cpus))
        else:
            kwargs["address"] = self.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BatchError(f"cannot reach a Ray cluster at {self.address!r}: {exc}") from None
        return ray, True

    def _size(self, ray: Any) -> int:
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        if self.gpus > 0:
            return max(1, int(res.get("GPU", 0) // self.gpus))
        return max(1, int(res.get("CPU", 1) // self.cpus))

    def run(self, spec: JobSpec, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.connect()
        ray, owned = self._ray, self._owned
        actor_cls = _actor_class(ray).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
        )
        feed = _Feed(tasks)
        actors: list[Any] = []
        try:
            self.workers = self._size(ray)
            actors = self._start(ray, actor_cls, spec, self.workers)
            yield from self._loop(ray, actor_cls, spec, feed, actors)
        finally:
            for a in list(self._pids):
                with contextlib.suppress(Exception):
                    ray.kill(a)
            self._pids = {}
            self._ray = None
            if owned:
                ray.shutdown()

    def _start(self, ray: Any, actor_cls: Any, spec: JobSpec, n: int) -> list[Any]:
        """``n`` actors, loading their models in parallel."""
        actors = [actor_cls.remote(spec) for _ in range(n)]
        try:
            pids = ray.get([a.pid.remote() for a in actors])
        except ray.exceptions.RayActorError as exc:
            raise BatchError(f"the model could not be loaded on a Ray worker: {exc}") from None
        self._pids.update(zip(actors, pids, strict=True))
        return actors

    def _loop(self, ray: Any, actor_cls: Any, spec: JobSpec, feed: _Feed, idle: list) -> Iterator:
        inflight: dict[Any, tuple[Any, dict[str, Any], float]] = {}
        while True:
            while idle:
                task = feed.next()
                if task is None:
                    break
                if task.get("error"):
                    yield failed(task, task["error"])
                    continue
                actor = idle.pop()
                inflight[actor.process.remote(task)] = (actor, task, time.perf_counter())
                self._busy.add(self._pids.get(actor))
            if not inflight:
                return
            done, _ = ray.wait(list(inflight), num_returns=1)
            actor, task, sent = inflight.pop(done[0])
            self._busy.discard(self._pids.get(actor))
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                self.deaths += 1
                self._pids.pop(actor, None)
                res = _died(task, f"Ray actor died: {type(exc).__name__}", feed)
                if res is not None:
                    yield res
                idle += self._start(ray, actor_cls, spec, 1)
                continue
            idle.append(actor)
            yield _timed(result, sent)
