#!/usr/bin/env python3
"""Turns the JSON results of tests/bench/run.sh into report.md and SVG plots.

Absolute numbers move from run to run on a shared machine, so every figure is
also given as a ratio to a reference measured in the same run.
"""
import html
import json
import os
import platform
import subprocess
import sys


def load(out):
    res = {}
    for f in sorted(os.listdir(os.path.join(out, "json"))):
        with open(os.path.join(out, "json", f)) as fh:
            res[f[:-5]] = json.load(fh)["results"]
    return res


def bars_svg(title, groups, series, values, unit, path):
    """Grouped bar chart: values[(group, series)] -> number."""
    colors = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]
    w, h, left, bottom, top = 720, 360, 70, 60, 40
    top_v = max([v for v in values.values() if v is not None] + [1e-9]) * 1.15
    gw = (w - left - 20) / len(groups)
    bw = gw * 0.8 / len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w/2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>']
    plot_h = h - bottom - top
    for i in range(5):
        v = top_v * i / 4
        y = h - bottom - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{w-20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left-6}" y="{y+4:.1f}" text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="16" y="{top + plot_h/2}" transform="rotate(-90 16 {top + plot_h/2})" text-anchor="middle">{html.escape(unit)}</text>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        for si, s in enumerate(series):
            v = values.get((g, s))
            if v is None:
                continue
            bh = plot_h * v / top_v
            x = x0 + si * bw
            out.append(f'<rect x="{x:.1f}" y="{h-bottom-bh:.1f}" width="{bw*0.92:.1f}" height="{bh:.1f}" fill="{colors[si % len(colors)]}"/>')
            out.append(f'<text x="{x + bw*0.46:.1f}" y="{h-bottom-bh-4:.1f}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        out.append(f'<text x="{left + gi*gw + gw/2:.1f}" y="{h-bottom+16}" text-anchor="middle">{html.escape(g)}</text>')
    lx = left
    for si, s in enumerate(series):
        out.append(f'<rect x="{lx}" y="{h-22}" width="12" height="12" fill="{colors[si % len(colors)]}"/>')
        out.append(f'<text x="{lx+16}" y="{h-12}">{html.escape(s)}</text>')
        lx += 24 + 7 * len(s)
    out.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(out))


# What a new/baseline ratio must exceed to mean something: the run-to-run
# spread BENCHMARKS.md records on this machine. Same-run ratios moved by about
# ±10 % between runs; latency tails more: the same two commits, interleaved
# at one offered rate, gave p99s of 2.4-3.5 ms, so up to 1.45x either way.
NOISE = (0.9, 1.1)
TAIL_NOISE = (1 / 1.45, 1.45)
READING = ("Ratios are new/baseline, both measured in this run. Within ±10 % is the run-to-run noise on this "
           "machine (BENCHMARKS.md); latency tails (p99, p999, max) spread wider, 0.69-1.45 (the same two commits "
           "gave p99s of 2.4-3.5 ms at one rate), so only a ratio outside its band, seen again in a second run, "
           "is a change.")


def baseline_section(out, get):
    """The same measurements on the baseline binary, as new/baseline ratios.

    Empty when the run had no baseline (run.sh writes baseline.json only then),
    so the report without one stays as it was.
    """
    path = os.path.join(out, "baseline.json")
    if not os.path.exists(path):
        return ""
    with open(path) as fh:
        meta = json.load(fh)
    reading = READING
    if meta.get("quick"):
        reading = ("**A smoke run (BENCH_QUICK=1)**: one round of 1 s and a few hundred pairs, far noisier than "
                   "the bands below, which are for a full run; it shows that every measurement ran, not how they "
                   "compare. " + READING)
    rows = []

    def fmt(v):
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")

    def cmp(what, new, base, unit, higher_is_better, band=NOISE):
        ratio = new / base if (new is not None and base) else None
        if ratio is None:
            reading = ""
        elif band[0] <= ratio <= band[1]:
            reading = "within noise"
        else:
            reading = "**better**" if (ratio > 1) == higher_is_better else "**worse**"
        rows.append(f"| {what} | {fmt(new)} {unit} | {fmt(base)} {unit} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} | {reading} |")

    def rate(k):
        p, s = get(k, "pairs"), get(k, "seconds")
        return p / s if p and s else None

    def cpu_ms(k):
        cpu, pairs = get(k, "relay_cpu_seconds"), get(k, "pairs")
        return 1000 * cpu / pairs if (cpu is not None and pairs) else None

    cmp("pair set-ups, one node (load-tool bound)", rate("setup-relay"), rate("setup-base"), "pairs/s", True)
    cmp("relay CPU per pair set-up, one node", cpu_ms("setup-relay-cpu"), cpu_ms("setup-base-cpu"), "ms", False)
    for size in ["64", "1KiB", "64KiB"]:
        for new, base, where in [("relay", "base", "one node"), ("cross", "base-cross", "cross node")]:
            cmp(f"throughput {size}, {where}", get(f"tp-{size}-{new}", "frames_per_second"),
                get(f"tp-{size}-{base}", "frames_per_second"), "frames/s", True)
    for new, base, where in [("lat-relay", "lat-base", "one node"), ("lat-cross", "lat-base-cross", "cross node")]:
        for q in ["p50_us", "p99_us", "p999_us", "max_us"]:
            cmp(f"latency 1 KiB {where} {q[:-3]} (offered {get(new, 'offered_rate') or 0:,} f/s)",
                get(new, q), get(base, q), "us", False, NOISE if q == "p50_us" else TAIL_NOISE)
    conns = get("idle-relay", "connections")
    cmp(f"memory per idle paired connection, connected only ({conns or 0:,} held)",
        get("idle-relay", "bytes_per_connection_fresh"), get("idle-base", "bytes_per_connection_fresh"), "B", False)
    cmp(f"memory per idle paired connection after one frame each way ({conns or 0:,} held)",
        get("idle-relay", "bytes_per_connection"), get("idle-base", "bytes_per_connection"), "B", False)
    return (f"\n## Against the baseline {meta['label']}\n\n{reading}\n\n"
            "| measurement | new | baseline | new/baseline | |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\nThroughput is the median of the same interleaved rounds for both; "
            "the reconnect storm kills a node and is not run on the baseline.\n")


def node_section(get):
    """The relay against the Node reference (node-relay.js on `ws`), as relay/Node ratios from this run."""
    rows = []

    def fmt(v):
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")

    def cmp(what, ours, node, unit, better):
        ratio = ours / node if (ours is not None and node) else None
        rows.append(f"| {what} | {fmt(ours)} {unit} | {fmt(node)} {unit} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} | {better} |")

    def rate(k):
        p, s = get(k, "pairs"), get(k, "seconds")
        return p / s if p and s else None

    cmp("pair set-ups, one node (load-tool bound)", rate("setup-relay"), rate("setup-node"), "pairs/s", "higher")
    for size in ["64", "1KiB", "64KiB"]:
        cmp(f"throughput {size}, one node", get(f"tp-{size}-relay", "frames_per_second"),
            get(f"tp-{size}-node", "frames_per_second"), "frames/s", "higher")
    conns = get("idle-relay", "connections")
    cmp(f"memory per idle paired connection, connected only ({conns or 0:,} held)",
        get("idle-relay", "bytes_per_connection_fresh"), get("idle-node", "bytes_per_connection_fresh"), "B", "lower")
    cmp(f"memory per idle paired connection after one frame each way ({conns or 0:,} held)",
        get("idle-relay", "bytes_per_connection"), get("idle-node", "bytes_per_connection"), "B", "lower")
    return ("\n## Against a Node relay on `ws`\n\n"
            "tests/bench/node-relay.js: pairs a `register` with a `join` and copies frames, nothing more (like "
            "ws-forwarder), one Node process, measured by the same load tool in this run; memory on a fresh process "
            "of each. Ratios are relay/Node.\n\n"
            "| measurement | relay | Node ws | relay/Node | better |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def medians(r):
    """Throughput runs come in rounds (tp-SIZE-TARGET-rN): each target's median round by frames/s.

    The median round's other results (a fan-out's host frames/s, its guests) come with it, and
    "rounds" lists every round's frames/s.
    """
    rounds = {}
    for k, v in r.items():
        if k.startswith("tp-") and "-r" in k:
            rounds.setdefault(k.rsplit("-r", 1)[0], []).append(v)
    out = {}
    for k, vs in rounds.items():
        vs = sorted(vs, key=lambda v: v.get("frames_per_second", 0))
        out[k] = dict(vs[len(vs) // 2], rounds=[v.get("frames_per_second", 0) for v in vs])
    return out


FANOUT_SIZES = ["64", "1KiB"]


def rooms_section(get):
    """Rooms on one node (issue 13): fan-out and fan-in against one guest, as ratios from this run.

    One guest is the pairing throughput of the same relay node in the same rounds (tp-SIZE-relay);
    a room's frames/s is what all its receivers got, summed (fan-out: every guest's copy counts).
    """
    rows = []

    def fmt(v):
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")

    def ratio(v, ref):
        return f"{v / ref:.2f}" if (v is not None and ref) else "-"

    for size in FANOUT_SIZES:
        one = get(f"tp-{size}-relay", "frames_per_second")
        out, into = f"tp-{size}-fanout", f"tp-{size}-fanin"
        guests, rooms = get(out, "guests_per_room"), get(out, "rooms")
        v = get(out, "frames_per_second")
        rows.append(f"| fan-out {size}: one host to {fmt(guests)} guests, delivered ({fmt(rooms)} rooms) | "
                    f"{fmt(v)} frames/s | {fmt(one)} frames/s | {ratio(v, one)} |")
        host = get(out, "host_frames_per_second")
        per = get(out, "deliveries_per_host_frame")
        rows.append(f"| fan-out {size}: host frames, each to all guests ({fmt(per)} deliveries a frame) | "
                    f"{fmt(host)} frames/s | {fmt(one)} frames/s | {ratio(host, one)} |")
        v = get(into, "frames_per_second")
        rows.append(f"| fan-in {size}: {fmt(get(into, 'guests_per_room'))} guests to one host, read by the host "
                    f"({fmt(get(into, 'rooms'))} rooms) | {fmt(v)} frames/s | {fmt(one)} frames/s | {ratio(v, one)} |")
    for size in FANOUT_SIZES:
        one = get(f"tp-{size}-onecross", "frames_per_second")
        out = f"tp-{size}-fanout-cross"
        v = get(out, "frames_per_second")
        rows.append(f"| fan-out {size} across three nodes: one host to {fmt(get(out, 'guests_per_room'))} guests, "
                    f"delivered (one guest: a pair across nodes) | {fmt(v)} frames/s | {fmt(one)} frames/s | "
                    f"{ratio(v, one)} |")
        per = get(f"fanout-cross-{size}-publish", "publishes_per_host_frame")
        rows.append(f"| fan-out {size} across three nodes: Redis PUBLISH calls per broadcast frame "
                    f"(batched; at most one envelope per node with guests) | {fmt(per)} | | |")
    return ("\n## Rooms: fan-out and fan-in on one node\n\n"
            "`relay-load --scenario fanout`/`fanin` on the one-node relay, in the same interleaved rounds as "
            "the pairing throughput (\"one guest\"), with as many rooms as throughput has pairs. Every frame "
            "reached every receiver once and in order, or the run failed. Ratios are room/one guest.\n\n"
            "| measurement | room | one guest | ratio |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


ALPHABET = 28
LIVE_CODES = 10_000


def guess_section(get):
    """Joins under attack (issue 16): the guess rate the cluster let through, the honest pairings beside it,
    and the expected time for the guessers to hit any of 10,000 live codes: 28^length / 10,000 / rate,
    for the code length in force (8 under attack) and, for comparison, for 6 characters."""
    rate = get("guess", "guesses_per_minute")
    length = get("guess", "code_length")

    def fmt(v):
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")

    def expected(chars):
        if not rate or not chars:
            return None
        return ALPHABET ** chars / LIVE_CODES / rate  # minutes

    def span(minutes):
        if minutes is None:
            return "-"
        if minutes >= 2 * 24 * 60:
            return f"{minutes / (24 * 60):,.1f} days"
        if minutes >= 120:
            return f"{minutes / 60:,.1f} hours"
        return f"{minutes:,.1f} minutes"

    rows = [
        f"| guessing addresses, nodes | {fmt(get('guess', 'guessers'))}, {fmt(get('guess', 'nodes'))} |",
        f"| wrong guesses answered, refused by the join rate | {fmt(get('guess', 'wrong_guesses'))}, "
        f"{fmt(get('guess', 'rate_limited'))} |",
        f"| guess rate let through (past each address's burst) | {fmt(rate)} a minute |",
        f"| honest pairings (register + join), failed | {fmt(get('guess', 'honest_pairings'))}, "
        f"{fmt(get('guess', 'honest_failures'))} |",
        f"| honest pairing time p50, max | {fmt(get('guess', 'honest_p50_ms'))} ms, "
        f"{fmt(get('guess', 'honest_max_ms'))} ms |",
        f"| code length in force | {fmt(length)} characters |",
        f"| expected time to hit any of {LIVE_CODES:,} live codes at that rate | {span(expected(length))} |",
        f"| the same with 6-character codes | {span(expected(6))} |",
    ]
    return ("\n## Joins under attack\n\n"
            "`relay-load --scenario guess`: 50 addresses guess codes on every node of a 3-node cluster as fast "
            "as `RELAY_JOIN_RATE` allows, while a person pairs once a second from another address. Past "
            "`RELAY_FAILED_JOIN_LIMIT` the cluster is under attack and issues 8-character codes; nobody is "
            "refused. Expected time: 28^length / 10,000 / rate.\n\n"
            "| measurement | value |\n|---|---|\n" + "\n".join(rows) + "\n")


def main():
    out = sys.argv[1]
    r = load(out)
    r.update(medians(r))
    get = lambda k, f: r.get(k, {}).get(f)
    rows = []

    def row(what, value, unit, ref=None, ref_label="", target="", ok=None):
        ratio = f"{value / ref:.0%} of {ref_label}" if (value is not None and ref) else ""
        mark = "" if ok is None else ("met" if ok else "**missed**")
        fmt = "-" if value is None else (f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}")
        rows.append(f"| {what} | {fmt} {unit} | {ratio} | {target} | {mark} |")

    rps1, rps16 = get("redis-P1", "requests_per_second"), get("redis-P16", "requests_per_second")
    row("redis-benchmark PUBLISH, plain", rps1, "req/s")
    row("redis-benchmark PUBLISH, -P 16", rps16, "req/s")

    def rate(k):
        p, s = get(k, "pairs"), get(k, "seconds")
        return p / s if p and s else None
    fs, rs = rate("setup-forwarder"), rate("setup-relay")
    row("pair set-ups, one node", rs, "pairs/s", fs, "forwarder", ">= 5,000 pairs/s", rs is not None and rs >= 5000)
    row("pair set-ups, forwarder", fs, "pairs/s")
    cpu = get("setup-relay-cpu", "relay_cpu_seconds")
    if cpu:
        cap = get("setup-relay-cpu", "pairs") / cpu * (os.cpu_count() or 1)
        row(f"pair set-ups one node could take (relay CPU per set-up x {os.cpu_count()} cores)", cap, "pairs/s",
            None, "", ">= 5,000 pairs/s", cap >= 5000)

    for size in ["64", "1KiB", "64KiB"]:
        fwd, one = get(f"tp-{size}-forwarder", "frames_per_second"), get(f"tp-{size}-relay", "frames_per_second")
        same, cross = get(f"tp-{size}-same", "frames_per_second"), get(f"tp-{size}-cross", "frames_per_second")
        row(f"throughput {size}, forwarder", fwd, "frames/s")
        row(f"throughput {size}, Node ws relay", get(f"tp-{size}-node", "frames_per_second"), "frames/s", fwd, "forwarder")
        row(f"throughput {size}, relay one node", one, "frames/s", fwd, "forwarder", ">= 80 % of forwarder",
            None if not (one and fwd) else one / fwd >= 0.8)
        row(f"throughput {size}, cluster same node", same, "frames/s", fwd, "forwarder")
        row(f"throughput {size}, cluster cross node", cross, "frames/s", same, "same node", ">= 50 % of same node",
            None if not (cross and same) else cross / same >= 0.5)

    p99 = get("lat-relay", "p99_us")
    offered = get("lat-relay", "offered_rate")
    for k, label in [("lat-relay", "relay one node"), ("lat-forwarder", "forwarder"), ("lat-cross", "relay cross node")]:
        for q in ["p50_us", "p99_us", "p999_us", "max_us"]:
            v = get(k, q)
            ref = get("lat-forwarder", q) if k != "lat-forwarder" else None
            tgt, ok = "", None
            if k == "lat-relay" and q == "p99_us":
                tgt, ok = "< 2,000 us at half peak", v is not None and v < 2000
            row(f"latency 1 KiB {label} {q[:-3]} (offered {get(k, 'offered_rate') or 0:,} f/s)", v, "us", ref, "forwarder", tgt, ok)

    per = get("idle-relay", "bytes_per_connection")
    conns = get("idle-relay", "connections")
    fresh = get("idle-relay", "bytes_per_connection_fresh")
    # Issue 15: at most 4 KiB, connected only and after a frame each way,
    # with 16,000 connections or more on the node (a quick run holds fewer).
    enough = (conns or 0) >= 16000
    def lean(v):
        return None if v is None or not enough else v <= 4096
    row(f"memory per idle paired connection, connected only ({conns or 0:,} held)", fresh, "B", None, "",
        "<= 4,096 B at 16,000 held", lean(fresh))
    row(f"memory per idle paired connection after one frame each way ({conns or 0:,} held)", per, "B", None, "",
        "<= 4,096 B at 16,000 held", lean(per))
    node_per = get("idle-node", "bytes_per_connection")
    row("memory per idle paired connection after one frame each way, Node ws relay", node_per, "B")

    row("storm: seconds until every mac resumed", get("storm", "seconds_until_all_resumed"), "s")
    row(f"storm: macs resumed (of {get('storm', 'pairs') or 0})", get("storm", "resumed"), "")
    row("storm: frames lost", get("storm", "frames_lost"), "", None, "", "0", get("storm", "frames_lost") == 0)
    row("storm: frames duplicated", get("storm", "frames_duplicated"), "")

    # Plots: throughput as a share of the forwarder (sizes differ by orders of magnitude), latency quantiles.
    series = ["forwarder", "Node ws relay", "relay one node", "cluster same node", "cluster cross node"]
    keys = ["forwarder", "node", "relay", "same", "cross"]
    vals = {}
    for size in ["64", "1KiB", "64KiB"]:
        fwd = get(f"tp-{size}-forwarder", "frames_per_second")
        for s, k in zip(series, keys):
            v = get(f"tp-{size}-{k}", "frames_per_second")
            vals[(f"{size} frames", s)] = (100 * v / fwd) if (v and fwd) else None
    bars_svg("Throughput, % of the minimal forwarder (same run)", [f"{s} frames" for s in ["64", "1KiB", "64KiB"]],
             series, vals, "% of forwarder frames/s", os.path.join(out, "throughput.svg"))
    lat = {}
    for q in ["p50_us", "p99_us", "p999_us"]:
        for s, k in [("forwarder", "lat-forwarder"), ("relay one node", "lat-relay"), ("relay cross node", "lat-cross")]:
            lat[(q[:-3], s)] = get(k, q)
    bars_svg(f"Latency, 1 KiB frames at half the relay's peak ({offered or 0:,} f/s; cross node at a quarter)",
             ["p50", "p99", "p999"], ["forwarder", "relay one node", "relay cross node"], lat, "microseconds",
             os.path.join(out, "latency.svg"))

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("# relay benchmark report\n\n")
        fh.write(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
                 "all processes on 127.0.0.1 in one run.\n\n")
        fh.write("| measurement | value | ratio (same run) | target | |\n|---|---|---|---|---|\n")
        fh.write("\n".join(rows) + "\n\nThroughput rows are medians of interleaved rounds (each round's numbers are in json/).\n"
                 "\n![throughput](throughput.svg)\n\n![latency](latency.svg)\n")
        fh.write(rooms_section(get))
        fh.write(guess_section(get))
        fh.write(node_section(get))
        fh.write(baseline_section(out, get))
    print(open(os.path.join(out, "report.md")).read())


if __name__ == "__main__":
    main()
