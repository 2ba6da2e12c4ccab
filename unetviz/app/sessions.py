"""Per-browser results (a run's Trace and image) held by the server, with limits.

gradio's own ``gr.State`` keeps a value per session for up to 10,000 sessions and an hour
after a tab closes; a run's trace is ~5 MB, so 200 visitors would hold 1 GB. The app keeps
only a session key in the browser's state and the heavy part here: a time-to-live after the
last use, a cap on live sessions (the least recently used one goes first), a cap on the bytes
all sessions hold together, and a free on disconnect (``demo.unload``).

Bytes (``Trace.nbytes``, measured from the records' shapes): an SD 1.5 run at 512 px and 25
steps keeps 99 MiB of head-averaged maps plus 63 MiB of DAAM's per-head sums; SD 2.1 at 768 px
223 + 118 MiB; SDXL at 1024 px 376 + 421 MiB; a 25-step demo run 2.2 MiB (0.16 MiB of it
DAAM's). Over the budget, the least recently used sessions first give up their DAAM per-head
sums (the maps, image and every other view stay; the DAAM preset then asks for a new Run),
then whole sessions go. The newest session is always kept whole.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: idle seconds before a session's results are freed
DEFAULT_TTL_S = 30 * 60
#: live sessions kept at most (least recently used freed first)
DEFAULT_MAX_SESSIONS = 64
#: bytes all sessions' traces and images may hold together (see the module docstring)
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass
class Session:
    """One browser session's results: the trace, its image and a label (the prompt)."""

    trace: Any
    image: Image.Image | None = None
    label: str = ""
    #: what each follow-up output (layer grid, zip) was last made from, for this trace: an
    #: unchanged one is not made and sent again
    shown: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: set when the memory budget freed this trace's DAAM per-head sums (:meth:`shed`)
    shed_daam: bool = False

    @property
    def steps(self) -> int:
        """Captured forwards (denoising steps x 1)."""
        return max(int(self.trace.steps), 1)

    def nbytes(self) -> int:
        """Bytes held by the trace's tensors and the image (what expiry frees)."""
        total = self.trace.nbytes() if self.trace is not None else 0
        if self.image is not None:
            total += self.image.width * self.image.height * 3
        return total

    def shed(self) -> int:
        """Free the trace's DAAM per-head sums (only the DAAM preset reads them); the bytes
        freed (0 when it kept none)."""
        freed = 0
        for rec in getattr(self.trace, "attention", {}).values():
            if rec.head_sum is not None:
                freed += rec.head_sum.numel() * rec.head_sum.element_size()
                rec.head_sum, rec.head_count = None, 0
        self.shed_daam = self.shed_daam or freed > 0
        return freed


class SessionStore:
    """session key -> Session, expiring after ``ttl_s`` idle seconds, at most ``max_sessions``
    holding at most ``max_bytes`` together (the newest one excepted)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[str, tuple[Session, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        dead = [k for k, (_, t) in self._data.items() if now - t > self.ttl_s]
        for k in dead:
            del self._data[k]
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    def _fit(self, newest: str) -> None:
        """Bring the bytes held within :attr:`max_bytes`: the least recently used sessions
        shed their DAAM per-head sums first, then go whole; ``newest`` is never touched."""
        sizes = {k: s.nbytes() for k, (s, _) in self._data.items()}
        total = sum(sizes.values())
        older = [k for k in self._data if k != newest]  # least recently used first
        for k in older:
            if total <= self.max_bytes:
                return
            freed = self._data[k][0].shed()
            sizes[k] -= freed
            total -= freed
        for k in older:
            if total <= self.max_bytes:
                return
            del self._data[k]
            total -= sizes[k]

    def get(self, key: str | None) -> Session | None:
        """The session's results (refreshing its time-to-live), or None when expired/absent."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if not key or key not in self._data:
                return None
            session, _ = self._data.pop(key)
            self._data[key] = (session, now)
            return session

    def put(self, key: str, session: Session) -> None:
        """Keep ``session`` under ``key`` (replacing what was there)."""
        now = time.monotonic()
        with self._lock:
            self._data.pop(key, None)
            self._data[key] = (session, now)
            self._expire(now)
            self._fit(key)

    def drop(self, key: str | None) -> None:
        """Free a session's results (on disconnect)."""
        with self._lock:
            self._data.pop(key or "", None)

    def sweep(self) -> None:
        """Free expired sessions now (a timer calls this; ``get``/``put`` do it too)."""
        with self._lock:
            self._expire(time.monotonic())

    def start_sweeper(self, every_s: float | None = None) -> threading.Thread:
        """A daemon thread freeing expired sessions every ``every_s`` seconds (default: a
        quarter of the time-to-live, 1..60 s), so idle memory returns without new visits."""
        period = every_s or min(60.0, max(1.0, self.ttl_s / 4))

        def loop() -> None:
            while True:
                time.sleep(period)
                self.sweep()

        t = threading.Thread(target=loop, name="unetviz-session-sweeper", daemon=True)
        t.start()
        return t

    def keys(self) -> list[str]:
        """Live session keys, least recently used first."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def nbytes(self) -> int:
        """Bytes held by all live sessions' tensors and images."""
        with self._lock:
            sessions = [s for s, _ in self._data.values()]
        return sum(s.nbytes() for s in sessions)
