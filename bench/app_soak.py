"""Session memory soak: ``python bench/app_soak.py [--sessions 200] [--ttl 20] [--steps 4]``.

Serves the app in this process with a short session time-to-live, then N new gradio_client
sessions each do one Run of the demo model, then everything idles past the TTL. Prints the
process RSS and the bytes the session store holds along the way (the curve), and whether RSS
came back to within 50 MB of where it started (issue 10: gradio alone kept every session's
trace, +4.5 MB each).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trim() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), as a long-running
    server's allocator eventually does."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def clients(url: str, sessions: int, steps: int) -> int:
    """The child process: ``sessions`` new gradio_client sessions, one Run each."""
    from gradio_client import Client

    from tests.app_support import named, run_args
    from unetviz.app.handlers import AppHandlers

    prompts = ["a red circle", "a blue square and a green triangle", "a yellow triangle"]
    for i in range(sessions):
        c = Client(url, verbose=False)
        out = c.predict(*run_args(prompts[i % 3], steps, seed=str(i)), api_name="/run")
        msg = named(AppHandlers.run, out)["run_msg"]  # the route's outputs, by name
        if msg:
            print(f"run {i} failed: {msg}", file=sys.stderr)
            return 1
        c.close()
        print(i, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve, run the sessions, idle, print the curve."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--ttl", type=float, default=20.0, help="session time-to-live, seconds")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the child's role
    args = ap.parse_args(argv)
    if args.client:
        return clients(args.client, args.sessions, args.steps)

    from gradio_client import Client

    from tests.app_support import named, run_args
    from unetviz.app import create_app, serve

    blocks, registry = create_app(preload=False, session_ttl_s=args.ttl)
    store = blocks.unetviz_handlers.sessions
    url = serve(blocks)
    # warm: the model loaded and one run done, so the baseline includes what every run needs
    warm = Client(url, verbose=False).predict(*run_args(steps=args.steps), api_name="/run")
    if named(blocks.unetviz_handlers.run, warm)["run_msg"]:
        raise SystemExit(f"the warm-up run failed: {named(blocks.unetviz_handlers.run, warm)}")
    time.sleep(args.ttl + 2)
    store.sweep()
    trim()
    start = rss_mb()
    print(f"start: RSS {start:.0f} MB, {len(store)} live sessions")
    # the clients run in a child process, so the RSS measured here is the server's alone
    import subprocess

    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--client",
            url,
            "--sessions",
            str(args.sessions),
            "--steps",
            str(args.steps),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    for line in child.stdout:  # one line per finished session
        i = int(line.split()[0])
        if (i + 1) % 25 == 0:
            print(
                f"after {i + 1:4d} sessions ({time.perf_counter() - t0:5.0f} s): RSS "
                f"{rss_mb():6.0f} MB, {len(store):3d} live sessions holding "
                f"{store.nbytes() / 2**20:6.1f} MB"
            )
    if child.wait() != 0:
        raise SystemExit("the client process failed")
    peak = rss_mb()
    for waited in range(0, int(args.ttl) + 6, max(1, int(args.ttl) // 4)):
        time.sleep(max(1, int(args.ttl) // 4))
        store.sweep()
        trim()
        print(
            f"idle {waited + max(1, int(args.ttl) // 4):3d} s: RSS {rss_mb():6.0f} MB, "
            f"{len(store):3d} live sessions holding {store.nbytes() / 2**20:6.1f} MB"
        )
    end = rss_mb()
    ok = end - start <= 50
    print(
        f"RSS start {start:.0f} MB, peak {peak:.0f} MB, after the TTL {end:.0f} MB: "
        f"{end - start:+.0f} MB | target within 50 MB of the start: {'OK' if ok else 'MISSED'}"
    )
    blocks.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
