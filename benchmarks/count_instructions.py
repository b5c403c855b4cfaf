"""Instructions per request under valgrind's callgrind: a figure that machine load cannot disturb.

Wall-clock timings on a small shared machine wander by 20% between runs; instruction counts are
repeatable. For each middleware and route of bench_middleware.py this runs the app in-process for 0
and for N requests under ``valgrind --tool=callgrind`` and prints (Ir(N) - Ir(0)) / N.

    python benchmarks/count_instructions.py [--requests 500]      (needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ["no middleware", "starlette cookie", "sessionmw memory"]
# "anonymous" is /untouched requested without a session cookie (a visitor's first request).
ROUTES = ["anonymous", "/untouched", "/read", "/write"]


def run_app(kind: str, path: str, n: int) -> None:
    """Child side: warm up, then make ``n`` requests."""
    sys.path.insert(0, str(HERE))
    import bench_middleware as b

    async def go() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            app = b.build(kind, tmp)
            cookie = None
            if kind != "no middleware" and path != "anonymous":
                _, cookie = await b.call(app, "/write", None)
            route = "/untouched" if path == "anonymous" else path
            for _ in range(50):
                await b.call(app, route, cookie)
            for _ in range(n):
                await b.call(app, route, cookie)

    asyncio.run(go())


def instructions(kind: str, path: str, n: int) -> int:
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable, __file__,
             "--child", kind, path, str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    m = re.search(r"Collected : (\d+)", proc.stderr)
    assert m, proc.stderr[-2000:]
    return int(m.group(1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_app(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    n = args.requests
    print(f"instructions per request (valgrind callgrind, {n} requests after warm-up)")
    print("| middleware | " + " | ".join(ROUTES) + " |")
    print("|---|" + "---:|" * len(ROUTES))
    for kind in KINDS:
        cells = []
        for route in ROUTES:
            if kind == "no middleware" and route not in ("anonymous", "/untouched"):
                cells.append("n/a")
                continue
            per = (instructions(kind, route, n) - instructions(kind, route, 0)) / n
            cells.append(f"{per / 1000:.0f}k")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
