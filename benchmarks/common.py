"""Helpers shared by the benchmark scripts: threads, machine and git info, memory probes, atomic results files.

Every result record the benchmarks write carries ``threads``, ``machine`` and ``git`` (from :func:`provenance`),
so a number can always be traced to the machine, the code and the thread count that produced it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
)
MMAP_THRESHOLD = "131072"


# ----------------------------------------------------------------------------------------------- threads
def set_threads(threads: int) -> None:
    """Pins torch's intra-op threads (and the OpenMP / MKL env for child processes) to ``threads``."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads={threads} must be >= 1.")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- machine and git
def cpu_model() -> str:
    """The CPU model string from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Platform, CPU model, logical CPU count, Python and torch versions, and the GPU if any."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_info() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout (dirty: uncommitted changes under ``leapalign/``)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return {"commit": sha, "dirty": bool(git("status", "--porcelain", "--", "leapalign"))}


def provenance(threads: int) -> dict[str, Any]:
    """The fields every record carries: ``threads``, ``machine``, ``git``, the allocator in use and ``load_avg``.

    ``load_avg`` is the system's 1, 5 and 15-minute load average when the record is written: above ``threads``,
    other work shared the CPU with the cell and its timings are slower than the machine's.
    """
    return {
        "threads": threads,
        "machine": machine_info(),
        "git": git_info(),
        "allocator": allocator_in_use(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------------------------------- allocator
def jemalloc_path() -> str | None:
    """Path of an installed jemalloc shared library, or ``None``."""
    return next((p for p in JEMALLOC_CANDIDATES if Path(p).is_file()), None)


def allocator_env() -> tuple[dict[str, str], str]:
    """Environment for a child process whose memory can be measured honestly, and its description.

    jemalloc (``LD_PRELOAD``) when installed: fast, and :class:`Jemalloc` reads its exact live-byte counters.
    Otherwise glibc with ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks are mmapped and returned on free, so
    the resident set tracks live memory; slower, see docs/benchmarks.md).
    """
    lib = jemalloc_path()
    if lib is not None:
        return {"LD_PRELOAD": lib}, "jemalloc"
    return {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}, f"glibc MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"


def allocator_in_use() -> str:
    """Describes the allocator of *this* process from its environment."""
    if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        return "jemalloc"
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return f"glibc MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}"
    return "glibc (default)"


class Jemalloc:
    """jemalloc's own counters through ``mallctl`` (only when jemalloc is the process's allocator).

    ``thread.peak`` is the peak of (bytes allocated - bytes freed) by the calling thread since its last reset:
    the exact live-memory peak of a region, unaffected by pages the allocator keeps. With one torch thread
    on the CPU every tensor of the forward and backward passes is allocated by the main thread.
    """

    def __init__(self) -> None:
        import ctypes

        self._ct = ctypes
        self._lib = ctypes.CDLL(jemalloc_path() or "libjemalloc.so.2")

    @classmethod
    def active(cls) -> Jemalloc | None:
        """An instance when jemalloc is preloaded in this process, else ``None``."""
        return cls() if allocator_in_use() == "jemalloc" and jemalloc_path() else None

    def _read(self, name: str) -> int:
        value, size = self._ct.c_uint64(0), self._ct.c_size_t(8)
        rc = self._lib.mallctl(name.encode(), self._ct.byref(value), self._ct.byref(size), None, self._ct.c_size_t(0))
        if rc != 0:
            raise RuntimeError(f"mallctl({name!r}) failed with {rc}; is jemalloc built with statistics?")
        return int(value.value)

    def reset_thread_peak(self) -> None:
        rc = self._lib.mallctl(b"thread.peak.reset", None, None, None, self._ct.c_size_t(0))
        if rc != 0:
            raise RuntimeError(f"mallctl('thread.peak.reset') failed with {rc} (needs jemalloc >= 5.3).")

    def thread_peak_mb(self) -> float:
        """Peak live bytes of this thread since :meth:`reset_thread_peak`, MiB."""
        return self._read("thread.peak.read") / 2**20

    def allocated_mb(self) -> float:
        """Live bytes of the whole process (refreshed statistics), MiB."""
        epoch, size = self._ct.c_uint64(1), self._ct.c_size_t(8)
        self._lib.mallctl(b"epoch", self._ct.byref(epoch), self._ct.byref(size), self._ct.byref(epoch), size)
        return self._read("stats.allocated") / 2**20


# --------------------------------------------------------------------------------------- memory probes
def _status_kb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; CPU memory probes need Linux.")
    return float(match.group(1))


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``VmRSS``)."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (Linux ``VmHWM``), MiB."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS mark to the current RSS (``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


# ------------------------------------------------------------------------------------- results files
def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The list of records in a results file (empty when the file does not exist)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records; move it away or fix it.")
    return data


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock for ``path`` (several writers of one results file wait in turn).

    The lock file lives in the system's temporary directory, named by a hash of the resolved path, so that
    no lock file ever appears next to the results.
    """
    lock_dir = Path(tempfile.gettempdir()) / "leapalign-benchmark-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(lock_dir / f"{digest}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upsert_record(path: Path, record: dict[str, Any], key: Callable[[dict[str, Any]], Any]) -> None:
    """Replaces the record with the same ``key`` (or appends it), rewriting the file atomically under a lock."""
    with locked(path):
        records = [r for r in read_records(path) if key(r) != key(record)]
        records.append(record)
        write_json(path, records)


def find_record(records: Sequence[dict[str, Any]], **fields: Any) -> dict[str, Any] | None:
    """The last record whose fields equal ``fields``, or ``None``."""
    hits = [r for r in records if all(r.get(k) == v for k, v in fields.items())]
    return hits[-1] if hits else None
