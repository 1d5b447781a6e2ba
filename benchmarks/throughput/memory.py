"""Peak resident memory of a worker: the kernel's high-water mark reset before the timed run."""

from __future__ import annotations

import resource
import sys


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> str:
    """Reset the peak-RSS counter where the kernel allows it; return the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if _status_kb("VmHWM") is not None:
            return "VmHWM after clear_refs"
    except OSError:
        pass
    return "ru_maxrss (includes the loading peak)"


def rss_kb() -> int:
    now = _status_kb("VmRSS")
    if now is not None:
        return now
    import psutil  # non-Linux fallback

    return psutil.Process().memory_info().rss // 1024


def peak_rss_kb(method: str) -> int:
    if method.startswith("VmHWM"):
        return _status_kb("VmHWM") or 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux
