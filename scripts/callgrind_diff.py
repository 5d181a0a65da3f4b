"""Per-request instruction counts of two callgrind dumps of bench_server
(`/open` and `/protected`, see scripts/callgrind_http.sh) and the functions
whose own (exclusive) instructions per request differ the most.

    python3 scripts/callgrind_diff.py DIR CONFIG [TOP] [BASE ROUTE]

BASE and ROUTE (default `open` and `protected`) pick the two dumps. Also
prints the difference grouped by where it goes (GROUPS below, first match).
"""
import re
import subprocess
import sys


def load(directory, config, route):
    with open(f"{directory}/{config}-{route}.wrk") as f:
        requests = int(re.search(r"(\d+) requests in", f.read()).group(1))
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100",
         f"{directory}/{config}-{route}.out"],
        capture_output=True, text=True, check=True).stdout
    per_function, total = {}, 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(\(\s*[\d.]+%\)\s+)?(.*)$", line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        name = re.sub(r"\s*\[.*\]$", "", m.group(3)).strip()
        if "PROGRAM TOTALS" in name:
            total = count
            continue
        per_function[name] = per_function.get(name, 0) + count / requests
    return per_function, total / requests, requests


GROUPS = [
    ("key: header, shape, cache-key PRF",
     r"tower_api_key::key::|siphasher|extract::credential|crc32fast"),
    ("moka get: table, read log, housekeeping, clock",
     r"moka::|crossbeam|std::time|Timespec|clock_gettime"),
    ("identity into http::Extensions", r"hashbrown|http::extensions"),
    ("allocator, memcpy", r"malloc\.c|arena\.c|memmove|memset|memcmp|__rust_alloc|__rdl_|__rust_dealloc"),
    ("the layer: service, future, verdict, limits, telemetry, header marks",
     r"tower_api_key::|http::header::map::HeaderMap<T>::get_mut"),
    ("axum route layer, tower plumbing", r"axum|tower::|tower_http|http_body_util|futures_util"),
    ("everything else: hyper, tokio, http (and run-to-run noise)", r".*"),
]


def grouped(base, route):
    sums = {name: 0.0 for name, _ in GROUPS}
    for k in set(base) | set(route):
        d = route.get(k, 0) - base.get(k, 0)
        for name, pattern in GROUPS:
            if re.search(pattern, k):
                sums[name] += d
                break
    return sums


def main():
    directory, config = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    base, route = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else ("open", "protected")
    open_, open_total, open_n = load(directory, config, base)
    prot, prot_total, prot_n = load(directory, config, route)
    print(f"== {config}: instructions per request, /{base} {open_total:,.0f} "
          f"({open_n} requests), /{route} {prot_total:,.0f} ({prot_n} requests), "
          f"difference {prot_total - open_total:,.0f}")
    diff = sorted(((prot.get(k, 0) - open_.get(k, 0), k) for k in set(open_) | set(prot)),
                  reverse=True)
    print(f"{'more':>8} {route:>10} {base:>8}  function (own instructions per request)")
    for d, name in diff[:top]:
        print(f"{d:8.0f} {prot.get(name, 0):10.0f} {open_.get(name, 0):8.0f}  {name[:120]}")
    print(f"-- grouped: /{route} minus /{base}, instructions per request")
    for name, d in grouped(open_, prot).items():
        print(f"{d:8.0f}  {name}")


if __name__ == "__main__":
    main()
