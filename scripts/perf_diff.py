"""Server time per request of two perf dumps of bench_server (see
scripts/perf_http.sh): the functions whose share grows the most, then the
difference grouped as in scripts/callgrind_diff.py, plus the kernel.

    python3 scripts/perf_diff.py DIR BASE ROUTE [TOP]
"""
import re
import signal
import subprocess
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # for `| head`

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from callgrind_diff import GROUPS  # noqa: E402


def load(directory, route):
    with open(f"{directory}/{route}.requests") as f:
        requests = int(f.read().split()[0])
    out = subprocess.run(
        ["perf", "report", "-i", f"{directory}/{route}.data", "--no-children",
         "--sort", "dso,symbol", "--stdio", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    total, shares = 0, {}
    for line in out.splitlines():
        m = re.match(r"# Event count \(approx.\): (\d+)", line)
        if m:
            total = int(m.group(1))  # cpu-clock: nanoseconds
            continue
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)(\s+-\s+-)?\s*$", line)
        if m:
            key = ("kernel" if m.group(3) == "k" else m.group(2), m.group(4).strip())
            shares[key] = shares.get(key, 0) + float(m.group(1))
    per_request = {k: v / 100 * total / requests for k, v in shares.items()}
    return per_request, total / requests


def main():
    directory, base, route = sys.argv[1:4]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    a, a_total = load(directory, base)
    b, b_total = load(directory, route)
    print(f"== server time per request: /{base} {a_total:,.0f} ns, /{route} {b_total:,.0f} ns, "
          f"difference {b_total - a_total:,.0f} ns")
    keys = sorted(set(a) | set(b), key=lambda k: -(b.get(k, 0) - a.get(k, 0)))
    for k in keys[:top]:
        print(f"{b.get(k, 0) - a.get(k, 0):8.1f} {b.get(k, 0):8.1f} {a.get(k, 0):8.1f}  "
              f"{k[0][:12]:12} {k[1][:110]}")
    print(f"-- grouped: /{route} minus /{base}, ns per request")
    sums = {"kernel (network stack, wake-ups; IRQ-off time lands on irqrestore)": 0.0}
    sums.update({name: 0.0 for name, _ in GROUPS})
    for k in set(a) | set(b):
        d = b.get(k, 0) - a.get(k, 0)
        if k[0] == "kernel":
            sums["kernel (network stack, wake-ups; IRQ-off time lands on irqrestore)"] += d
            continue
        name = k[1] if "vdso" not in k[0] else "clock_gettime"
        for group, pattern in GROUPS:
            if re.search(pattern, name):
                sums[group] += d
                break
    for name, d in sums.items():
        print(f"{d:8.0f}  {name}")


if __name__ == "__main__":
    main()
