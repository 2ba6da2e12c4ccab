"""Engines run tasks through workers and yield results as they finish (in any order).

- ``InProcessEngine``: one worker in this process.
- ``LocalEngine(n)``: ``n`` worker processes on this machine (forked from a forkserver that has
  imported torch once; one model each).
- ``RayEngine(address, workers, gpus_per_worker)``: one Ray actor per worker on a cluster.

Every engine runs the same ``Worker.process`` on one torch thread, so the records are
bit-identical whichever engine ran them. A worker that dies (killed, OOM-killed, segfault) or
gives no result within the prompt's timeout (stopped, hung) is replaced and its row retried,
up to ``MAX_ATTEMPTS`` times; then the row is recorded as failed. Closing the result generator
(Ctrl-C, SIGTERM) stops every worker. No engine starts more workers than there are prompts.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Protocol

from unetviz.callargs import as_float, as_int

from .rows import BatchError
from .worker import JobSpec, Worker, failed

MAX_ATTEMPTS = 3
#: local worker processes at most (further bounded by this machine's cores and memory)
MAX_LOCAL_WORKERS = 256
#: memory one worker process takes besides its model's weights (torch, Python, activations)
WORKER_BASE_BYTES = 400 * 2**20
#: per-prompt timeout: this many seconds plus the steps times the per-step estimate
TIMEOUT_BASE_S = 120.0
#: per-step estimate: seconds per GB of model weights (one torch thread), at least 1 s
TIMEOUT_S_PER_GB_STEP = 20.0
#: steps assumed for a row that names none (the pipelines' default)
DEFAULT_STEPS = 50
#: seconds to reach a Ray cluster, and to wait for its answer to a liveness check
RAY_CONNECT_TIMEOUT_S = 30.0


def _probe_s(default: float = 10.0) -> float:
    """``$UNETVIZ_RAY_PROBE_S``: seconds of silence after which a Ray cluster is asked whether
    it is alive, and how long its answer is waited for (1..600; anything else: the default)."""
    text = os.environ.get("UNETVIZ_RAY_PROBE_S", "").strip()
    try:
        value = float(text)
    except ValueError:
        return default
    return value if 1.0 <= value <= 600.0 else default


RAY_PROBE_TIMEOUT_S = _probe_s()


class Engine(Protocol):
    """What ``run_batch`` needs of an engine."""

    name: str
    #: workers in use (for the progress line; set once ``run`` starts)
    workers: int
    #: workers replaced so far (killed, crashed, timed out)
    deaths: int

    def connect(self, spec: JobSpec) -> None:
        """Check (and reach) what the engine needs before any output is written."""

    def pids(self) -> list[int]:
        """Worker process ids, busy ones first."""

    def run(
        self, spec: JobSpec, tasks: Iterable[dict[str, Any]], total: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Results of ``tasks`` (``total`` of them, when known) as they finish."""


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


def model_bytes(model: str) -> int:
    """Bytes of a model's weight files on disk (the demo folder for ``demo``; 4 GiB assumed
    for a name that is no local path, such as a hub id)."""
    from unetviz.detect import DEMO_DIR

    path = Path(DEMO_DIR if model == "demo" else model)
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            files = [f for f in path.rglob("*") if f.suffix in (".safetensors", ".ckpt", ".bin")]
            return sum(f.stat().st_size for f in files[:1000])
    except OSError:
        pass
    return 4 * 2**30


def prompt_timeout(spec: JobSpec, task: dict[str, Any], weights: int) -> float:
    """Seconds a worker may take for one prompt before it is replaced and the prompt retried:
    ``spec.timeout`` when set, else TIMEOUT_BASE_S + steps x max(1 s, TIMEOUT_S_PER_GB_STEP
    per GB of weights)."""
    if spec.timeout is not None:
        return float(spec.timeout)
    steps = task["row"].get("steps") or spec.steps or DEFAULT_STEPS
    return TIMEOUT_BASE_S + steps * max(1.0, TIMEOUT_S_PER_GB_STEP * weights / 1e9)


def machine_capacity(weights: int) -> tuple[int, int, int]:
    """(cores, bytes of memory available, workers this machine holds for a model of
    ``weights`` bytes: one per core, each WORKER_BASE_BYTES + its weights)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    avail = 0
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as fh:
            avail = next(
                int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")
            )
    per = WORKER_BASE_BYTES + weights
    by_memory = avail // per if avail else cores or 1
    return cores or 1, avail, max(1, min(cores or 1, by_memory))


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

    def runnable(self, failures: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The next task a worker should run; tasks that failed before running (a bad mask
        file) are appended to ``failures`` as their results."""
        while (task := self.next()) is not None and task.get("error"):
            failures.append(failed(task, task["error"]))
        return task

    def lost(self, task: dict[str, Any], why: str) -> dict[str, Any] | None:
        """A worker was lost running ``task``: requeue it, or return its failure once it has
        used every attempt."""
        attempt = task.get("attempt", 1)
        if attempt >= MAX_ATTEMPTS:
            return failed(task, f"worker died on each of {attempt} attempts ({why})")
        self.retry.appendleft({**task, "attempt": attempt + 1})
        return None

    @property
    def empty(self) -> bool:
        return self.exhausted and not self.retry


class InProcessEngine:
    """One worker, in this process. The loaded model is kept for the next run of the same
    model and options (an app or a notebook runs several prompt sets)."""

    name = "in-process"

    def __init__(self) -> None:
        self.deaths = 0
        self.workers = 1
        self._worker: Worker | None = None

    def connect(self, spec: JobSpec | None = None) -> None:
        """Nothing to reach."""

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

    def run(
        self, spec: JobSpec, tasks: Iterable[dict[str, Any]], total: int | None = None
    ) -> Iterator[dict[str, Any]]:
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
        self.limit = 0.0  # seconds the current task may take
        self.ready = False


class LocalEngine:
    """``n`` worker processes on this machine (at most one per core, as many as its memory
    holds, and never more than there are prompts)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = as_int(workers, "--workers", 1, MAX_LOCAL_WORKERS, error=BatchError)
        self.deaths = 0
        self._procs: list[_Proc] = []
        self._weights = 0

    def connect(self, spec: JobSpec) -> None:
        """Refuse more workers than this machine's cores and memory hold for ``spec.model``."""
        self._weights = model_bytes(spec.model)
        cores, avail, most = machine_capacity(self._weights)
        if self.workers > most:
            raise BatchError(
                f"--workers {self.workers}: this machine has {cores} cores and "
                f"{avail / 2**30:.1f} GiB of memory available; a worker of {spec.model!r} takes "
                f"~{(WORKER_BASE_BYTES + self._weights) / 2**30:.1f} GiB, so at most {most}"
            )

    def pids(self) -> list[int]:
        """Worker process ids, busy ones first."""
        live = [p for p in self._procs if p.ready and p.proc.is_alive()]
        return [p.proc.pid for p in sorted(live, key=lambda p: p.task is None)]

    def run(
        self, spec: JobSpec, tasks: Iterable[dict[str, Any]], total: int | None = None
    ) -> Iterator[dict[str, Any]]:
        if not self._weights:
            self.connect(spec)
        ctx = _context()
        feed = _Feed(tasks)
        n = self.workers if total is None else max(1, min(self.workers, total))
        self.workers = n
        self._procs = [_Proc(ctx, spec) for _ in range(n)]
        failures: list[dict[str, Any]] = []
        try:
            while True:
                for p in self._procs:
                    while p.ready and p.task is None:
                        task = feed.runnable(failures)
                        if task is None:
                            break
                        p.conn.send(task)
                        p.task, p.sent = task, time.perf_counter()
                        p.limit = prompt_timeout(spec, task, self._weights)
                yield from failures
                failures.clear()
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
        deadlines = [p.sent + p.limit for p in self._procs if p.task is not None]
        timeout = max(0.0, min(deadlines) - time.perf_counter()) if deadlines else None
        for obj in wait(list(by_obj), timeout=timeout):
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
        now = time.perf_counter()
        for p in [p for p in self._procs if p.task is not None and now - p.sent > p.limit]:
            p.proc.kill()  # stopped or hung: replaced, its prompt retried
            yield from self._replace(ctx, spec, feed, p, f"no result after {p.limit:.0f} s")

    def _replace(
        self, ctx: Any, spec: JobSpec, feed: _Feed, p: _Proc, why: str | None = None
    ) -> Iterator[dict]:
        p.proc.join(timeout=5)
        code = p.proc.exitcode
        self.deaths += 1
        if self.deaths > MAX_ATTEMPTS * (self.workers + 8):
            raise BatchError(f"workers keep dying ({self.deaths} deaths, last exit code {code})")
        self._procs.remove(p)
        p.conn.close()
        if p.task is not None:
            res = feed.lost(p.task, why or f"exit code {code}")
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


def _in_thread(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """``fn()`` run in a daemon thread, waited for in short slices (so SIGTERM and Ctrl-C are
    handled here meanwhile); BatchError naming ``what`` when it has not returned in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="unetviz-ray")
    thread.start()
    end = time.monotonic() + seconds
    while thread.is_alive() and time.monotonic() < end:
        thread.join(0.2)
    if thread.is_alive():
        raise BatchError(f"{what}: no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _probe(address: str) -> None:
    """A ``host:port`` address must accept a TCP connection within RAY_PROBE_TIMEOUT_S."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        return  # "auto", "ray://...": Ray resolves these itself
    host = host.removeprefix("ray://") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise BatchError(
            f"cannot reach a Ray cluster at {address!r}: {exc.strerror or exc} (is `ray start "
            "--head` running there?)"
        ) from None


class RayEngine:
    """One actor (one model) per worker on a Ray cluster: ``address`` is a cluster address,
    ``auto`` (the running cluster), or ``local`` (start one on this machine). A process that
    already called ``ray.init`` is used as it is. Connecting times out, resources the cluster
    lacks are refused, and a cluster that stops answering ends the run (the prompts done are
    kept)."""

    name = "ray"

    def __init__(
        self,
        address: str = "auto",
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
    ):
        if workers is not None:
            workers = as_int(workers, "--workers", 1, 4096, error=BatchError)
        self.address = address
        self.workers = workers
        self.gpus = as_float(gpus_per_worker, "--gpus-per-worker", 0.0, 1024.0, error=BatchError)
        self.cpus = as_float(cpus_per_worker, "cpus per worker", 0.0, 1024.0, error=BatchError)
        if self.cpus <= 0:
            raise BatchError(f"cpus per worker={self.cpus:g}: expected more than 0")
        self.deaths = 0
        self._pids: dict[Any, int] = {}
        self._busy: set[Any] = set()
        self._ray: Any = None
        self._owned = False
        self._weights = 4 * 2**30

    def pids(self) -> list[int]:
        """Actor process ids (on their nodes), busy ones first."""
        return sorted(self._pids.values(), key=lambda pid: pid not in self._busy)

    def connect(self, spec: JobSpec | None = None) -> None:
        """Reach the cluster now (``run`` would otherwise do it) and check it has the CPUs and
        GPUs asked for: an unreachable address or a missing resource is reported before
        anything is written."""
        if spec is not None:
            self._weights = model_bytes(spec.model)
        if self._ray is None:
            self._ray, self._owned = self._connect()
            try:
                self._check_resources(self._ray)
            except BaseException:
                self._release(self._ray, self._owned, alive=True)
                self._ray = None
                raise

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
            _probe(self.address)
            kwargs["address"] = self.address
        what = f"cannot reach a Ray cluster at {self.address!r}"
        try:
            if self.address == "local":  # the processes it starts die with the starting thread
                ray.init(**kwargs)
            else:  # a cluster that never answers must not hold the job (or SIGTERM) forever
                _in_thread(lambda: ray.init(**kwargs), RAY_CONNECT_TIMEOUT_S, what)
        except BatchError:
            raise
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BatchError(f"{what}: {exc}") from None
        return ray, True

    def _check_resources(self, ray: Any) -> None:
        res = _in_thread(ray.cluster_resources, RAY_PROBE_TIMEOUT_S, "the Ray cluster")
        have = {"GPU": float(res.get("GPU", 0)), "CPU": float(res.get("CPU", 0))}
        n = self.workers or 1
        for kind, per, flag in (("GPU", self.gpus, "--gpus-per-worker"), ("CPU", self.cpus, "")):
            if per and per * n > have[kind]:
                ask = f"{flag} {per:g} x " if flag else f"{per:g} {kind}s x "
                raise BatchError(
                    f"the Ray cluster at {self.address!r} has {have[kind]:g} {kind}s; "
                    f"{ask}{n} worker(s) needs {per * n:g} (actors would wait forever)"
                )

    def _size(self, ray: Any, total: int | None) -> int:
        if self.workers is not None:
            n = self.workers
        else:
            res = ray.cluster_resources()
            per, kind = (self.gpus, "GPU") if self.gpus > 0 else (self.cpus, "CPU")
            n = max(1, int(res.get(kind, 1) // per))
        return n if total is None else max(1, min(n, total))

    def _alive(self, ray: Any) -> bool:
        """Whether the cluster answers a liveness question in time with a live node. A
        ``host:port`` cluster whose port refuses connections is dead at once: Ray's own client
        keeps answering from its cache for about 30 s after the head is gone."""
        try:
            _probe(self.address)
            nodes = _in_thread(ray.nodes, RAY_PROBE_TIMEOUT_S, "the Ray cluster")
        except Exception:
            return False
        return any(node.get("Alive") for node in nodes or [])

    def _release(self, ray: Any, owned: bool, alive: bool) -> None:
        """Kill this run's actors and disconnect a cluster this engine started (in a thread:
        a dead cluster must not hang the exit)."""

        def release() -> None:
            for a in list(self._pids):
                with contextlib.suppress(Exception):
                    ray.kill(a)
            if owned:
                ray.shutdown()

        with contextlib.suppress(Exception):
            _in_thread(release, RAY_PROBE_TIMEOUT_S if alive else 1.0, "stopping Ray")
        self._pids = {}

    def run(
        self, spec: JobSpec, tasks: Iterable[dict[str, Any]], total: int | None = None
    ) -> Iterator[dict[str, Any]]:
        self.connect(spec)
        ray, owned = self._ray, self._owned
        actor_cls = _actor_class(ray).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
        )
        feed = _Feed(tasks)
        alive = True
        try:
            self.workers = self._size(ray, total)
            actors = self._start(ray, actor_cls, spec, self.workers)
            yield from self._loop(ray, actor_cls, spec, feed, actors)
        except BatchError:
            alive = self._alive(ray)
            raise
        finally:
            self._release(ray, owned, alive)
            self._ray = None

    def _get(self, ray: Any, refs: list, what: str) -> list:
        """``ray.get(refs)``, waited for in slices with a liveness check every
        RAY_PROBE_TIMEOUT_S (a dead cluster raises BatchError instead of hanging)."""
        last = time.monotonic()
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            if pending and time.monotonic() - last > RAY_PROBE_TIMEOUT_S:
                self._check_alive(ray, what)
                last = time.monotonic()
        return ray.get(refs)

    def _check_alive(self, ray: Any, what: str) -> None:
        if not self._alive(ray):
            raise BatchError(
                f"the Ray cluster at {self.address!r} stopped answering while {what}: the "
                "prompts done so far are kept; run the same command again to resume"
            )

    def _start(self, ray: Any, actor_cls: Any, spec: JobSpec, n: int) -> list[Any]:
        """``n`` actors, loading their models in parallel."""
        actors = [actor_cls.remote(spec) for _ in range(n)]
        try:
            pids = self._get(ray, [a.pid.remote() for a in actors], "starting workers")
        except ray.exceptions.RayActorError as exc:
            for _ in range(3):  # a dying cluster cancels every actor: tell that apart
                self._check_alive(ray, "starting workers")
                time.sleep(1.0)
            raise BatchError(f"the model could not be loaded on a Ray worker: {exc}") from None
        self._pids.update(zip(actors, pids, strict=True))
        return actors

    def _loop(self, ray: Any, actor_cls: Any, spec: JobSpec, feed: _Feed, idle: list) -> Iterator:
        inflight: dict[Any, tuple[Any, dict[str, Any], float, float]] = {}
        failures: list[dict[str, Any]] = []
        last = time.monotonic()
        while True:
            while idle:
                task = feed.runnable(failures)
                if task is None:
                    break
                actor = idle.pop()
                limit = prompt_timeout(spec, task, self._weights)
                inflight[actor.process.remote(task)] = (actor, task, time.perf_counter(), limit)
                self._busy.add(self._pids.get(actor))
            yield from failures
            failures.clear()
            if not inflight:
                return
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            if not done:
                idle += yield from self._overdue(ray, actor_cls, spec, feed, inflight)
                if time.monotonic() - last > RAY_PROBE_TIMEOUT_S:
                    self._check_alive(ray, "running prompts")
                    last = time.monotonic()
                continue
            last = time.monotonic()
            actor, task, sent, _ = inflight.pop(done[0])
            self._busy.discard(self._pids.get(actor))
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                idle += yield from self._lost(
                    ray, actor_cls, spec, feed, actor, task, f"Ray actor died: {type(exc).__name__}"
                )
                continue
            idle.append(actor)
            yield _timed(result, sent)

    def _overdue(self, ray: Any, actor_cls: Any, spec: JobSpec, feed: _Feed, inflight: dict):
        """Actors past their prompt's timeout: killed and replaced, their prompts retried."""
        now = time.perf_counter()
        fresh: list[Any] = []
        for ref, (actor, task, sent, limit) in list(inflight.items()):
            if now - sent > limit:
                del inflight[ref]
                self._busy.discard(self._pids.get(actor))
                with contextlib.suppress(Exception):
                    ray.kill(actor)
                fresh += yield from self._lost(
                    ray, actor_cls, spec, feed, actor, task, f"no result after {limit:.0f} s"
                )
        return fresh

    def _lost(self, ray, actor_cls, spec, feed, actor, task, why: str):
        """One actor lost: its task requeued (or failed), a new actor started in its place."""
        self.deaths += 1
        self._pids.pop(actor, None)
        res = feed.lost(task, why)
        if res is not None:
            yield res
        return self._start(ray, actor_cls, spec, 1)
