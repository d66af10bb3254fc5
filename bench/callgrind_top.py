#!/usr/bin/env python3
"""Sum a callgrind output file: total instructions, and the top functions and objects.

    bench/callgrind_top.py callgrind.out.2              # totals + top 25 by own instructions
    bench/callgrind_top.py -n 40 --per 11592 FILE       # per-request numbers (divide by 11592)
    bench/callgrind_top.py --inclusive FILE             # also top functions by inclusive cost
    bench/callgrind_top.py --per 14569 --base BASE_FILE --base-per 21704 FILE
                                    # per-request difference against a baseline run, by function

Reads the callgrind format directly (name compression "(id) name", relative positions,
calls= lines whose following cost line is the callee's inclusive cost and is not the caller's
own). Code without a symbol, such as the machine code wasmtime compiles from a plugin,
shows as "???" in object "???"; --group-unknown (default on) reports it as one entry.
Used by bench/callgrind.sh; stdlib only.
"""

import argparse
import collections
import re
import sys


def parse(path):
    names = {"ob": {}, "fl": {}, "fn": {}}
    own = collections.Counter()  # (ob, fn) -> own instructions
    incl_calls = collections.Counter()  # (ob, fn) -> instructions in calls made by it
    summary = None
    totals = None
    ob = fl = fn = "???"
    events = ["Ir"]
    in_call = False

    def name(kind, value):
        value = value.strip()
        m = re.match(r"^\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        ident, text = m.group(1), m.group(2)
        table = names[kind]
        if text is not None:
            table[ident] = text
            return text
        return table.get(ident, "(%s)" % ident)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                costs = parts[1:]
                ir = int(costs[0]) if costs else 0
                if in_call:
                    incl_calls[(ob, fn)] += ir
                    in_call = False
                else:
                    own[(ob, fn)] += ir
                continue
            key, _, value = line.partition("=")
            if key == "ob":
                ob = name("ob", value)
            elif key in ("fl", "fi", "fe"):
                fl = name("fl", value)
            elif key == "fn":
                fn = name("fn", value)
            elif key in ("cob", "cfi", "cfl"):
                name("ob" if key == "cob" else "fl", value)
            elif key == "cfn":
                name("fn", value)
            elif key == "calls":
                in_call = True
            elif line.startswith("events:"):
                events = line.split(":", 1)[1].split()
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
    return own, incl_calls, summary, totals, events


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("-n", type=int, default=25, help="how many entries to list")
    ap.add_argument("--per", type=float, default=0, help="divide by this (requests) and show per-request")
    ap.add_argument("--inclusive", action="store_true", help="also list by inclusive cost")
    ap.add_argument("--total-only", action="store_true", help="print only the total")
    ap.add_argument("--base", help="baseline callgrind file: list per-request differences (needs --per, --base-per)")
    ap.add_argument("--base-per", type=float, default=0, help="requests in the baseline interval")
    args = ap.parse_args()

    own, incl_calls, summary, totals, events = parse(args.file)
    own_sum = sum(own.values())
    total = summary or totals or own_sum
    if args.total_only:
        print(total)
        return
    per = args.per if args.per > 0 else None

    def fmt(v):
        s = "%14s" % f"{v:,}"
        if per:
            s += " %10.0f" % (v / per)
        return s

    print(f"file: {args.file}")
    print(f"events: {' '.join(events)}; summary {summary}, totals {totals}, sum of own costs {own_sum}")
    print("total:", fmt(total).strip(), "(per request)" if per else "")
    print()
    head = "%14s" % "Ir" + (" %10s" % "Ir/req" if per else "")
    by_ob = collections.Counter()
    for (o, _), v in own.items():
        by_ob[o] += v
    print(f"{head}   %    object (own instructions)")
    for o, v in by_ob.most_common(args.n):
        print(f"{fmt(v)} {100 * v / own_sum:5.1f}  {o}")
    print()
    print(f"{head}   %    function (own instructions)  [object]")
    for (o, f), v in own.most_common(args.n):
        print(f"{fmt(v)} {100 * v / own_sum:5.1f}  {f[:140]}  [{o.rsplit('/', 1)[-1]}]")
    if args.base:
        if not (per and args.base_per > 0):
            sys.exit("--base needs --per and --base-per")
        b_own, b_calls, b_summary, b_totals, _ = parse(args.base)
        b_total = b_summary or b_totals or sum(b_own.values())
        keys = set(own) | set(b_own)
        diff = {k: own.get(k, 0) / per - b_own.get(k, 0) / args.base_per for k in keys}
        print()
        print(f"per request: {total / per:,.0f} against the baseline's {b_total / args.base_per:,.0f}: "
              f"{total / per - b_total / args.base_per:+,.0f}")
        print()
        print(f"{'+Ir/req':>10}  function (own instructions per request, this run minus baseline)  [object]")
        for (o, f), v in sorted(diff.items(), key=lambda kv: -kv[1])[: args.n]:
            print(f"{v:+10.0f}  {f[:140]}  [{o.rsplit('/', 1)[-1]}]")
        b_ob = collections.Counter()
        for (o, _), v in b_own.items():
            b_ob[o] += v
        print()
        print(f"{'+Ir/req':>10}  object")
        for o in sorted(set(by_ob) | set(b_ob), key=lambda o: -(by_ob.get(o, 0) / per - b_ob.get(o, 0) / args.base_per)):
            print(f"{by_ob.get(o, 0) / per - b_ob.get(o, 0) / args.base_per:+10.0f}  {o}")
    if args.inclusive:
        incl = collections.Counter()
        for k, v in own.items():
            incl[k] += v
        for k, v in incl_calls.items():
            incl[k] += v
        print()
        print(f"{head}   %    function (inclusive; recursion counted more than once)")
        for (o, f), v in incl.most_common(args.n):
            print(f"{fmt(v)} {100 * v / own_sum:5.1f}  {f[:140]}  [{o.rsplit('/', 1)[-1]}]")


if __name__ == "__main__":
    main()
