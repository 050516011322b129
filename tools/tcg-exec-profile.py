#!/usr/bin/env python3
"""What pCPU 0 executes per server turn under QEMU TCG, from a `-d exec` log.

Record a window of a running boot, then read it:

    tools/tcg-exec-profile.py record LOG [--config PATH] [--after S] [--seconds S] [--dfilter RANGES]
    tools/tcg-exec-profile.py report LOG [--min-server N] [--functions ELF [--top K]]

`record` boots the appliance (default appliances/bench-smp.toml) with a
QEMU monitor socket and a `-dfilter` that keeps the guest's hot loop out
of the log (guests are linked where the core is; the default suits the
spinner, see `DFILTER`; the code of the core the filter leaves out is not
counted), waits until the monitor is up plus `--after` seconds (default
3, past boot), then turns on `log exec,nochain,in_asm` for `--seconds`
(default 2) and off again. With `nochain` every translated block's
execution is logged, not only those entered through a lookup; `in_asm`
logs each block's instructions when it is translated, and turning
`nochain` on makes QEMU translate every block again, so the log has the
length of every block it executes. Logging slows the boot by a large
factor: the counts are exact, the times in the boot's own report are not.

`report` cuts pCPU 0's log at each entry into a server (CPL 3) and gives,
per cycle (one turn and the core's work up to the next), medians of the
instructions executed, the blocks executed and the distinct blocks, for
the core (CPL 0 outside a guest) and the server; the first two cycles are
left out. `--min-server N` keeps only cycles in which the server executed
at least N instructions (on `bench-smp`, 15000 keeps the accountings).
`--functions ELF` adds, for that binary's runner (core or server, by its
load address), the instructions and the distinct blocks per cycle of each
function, named by `addr2line` (innermost inlined function for
instructions; the function the code is compiled in for blocks).

Why distinct blocks: a #VMEXIT, a VMRUN or a CR3 write empties QEMU's soft
TLB and jump cache, and a turn that comes 30 ms after the last one also
finds the host's caches cold, so what a turn costs follows how much
distinct code it runs more than how many instructions (docs/benchmarks.md).
"""
import argparse
import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import time

TRACE = re.compile(r"^Trace (\d+): \S+ \[([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)/")
INSN = re.compile(r"^0x([0-9a-f]+):")
GUEST_MODE = 1 << 21
SERVER_BASE = 0x4000_0000
MONITOR = "/tmp/cairn-exec-profile.sock"
# The core (from 1 MiB) and the servers (1 GiB up), less the spinner guest's
# loop, which is linked at 1 MiB too (guests/src/bin/spinner.rs). For memhog
# (appliances/bench-paging.toml) leave out 0x100100..0x100bff instead.
DFILTER = "0x100000..0x1001ff,0x100300..0x1fffff,0x40000000..0x4003ffff"


def who(flags):
    if flags & GUEST_MODE:
        return "guest"
    return "server" if flags & 3 == 3 else "core"


def record(args):
    if os.path.exists(MONITOR):
        os.unlink(MONITOR)
    env = dict(os.environ)
    env["CAIRN_QEMU_EXTRA"] = f"-dfilter {args.dfilter} -D {args.log} -monitor unix:{MONITOR},server,nowait"
    boot = subprocess.Popen(["cargo", "xtask", "run", "--config", args.config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(6000):
        if os.path.exists(MONITOR) or boot.poll() is not None:
            break
        time.sleep(0.1)
    if not os.path.exists(MONITOR):
        sys.exit("the boot ended before QEMU's monitor came up")
    time.sleep(args.after)
    monitor = socket.socket(socket.AF_UNIX)
    monitor.connect(MONITOR)
    monitor.sendall(b"log exec,nochain,in_asm\n")
    time.sleep(args.seconds)
    monitor.sendall(b"log none\n")
    time.sleep(0.3)
    monitor.close()
    boot.wait()
    print(f"recorded {args.seconds} s into {args.log}")


def read_log(path):
    """Each block's instruction count, and pCPU 0's (runner, pc) sequence."""
    length, sequence = {}, []
    start, count = None, 0
    with open(path, errors="replace") as log:
        for line in log:
            if line.startswith("IN:"):
                start, count = None, 0
                continue
            match = INSN.match(line)
            if match:
                if start is None:
                    start = int(match.group(1), 16)
                count += 1
                length[start] = count
                continue
            match = TRACE.match(line)
            if match:
                start = None
                if match.group(1) == "0":
                    sequence.append((who(int(match.group(4), 16)), int(match.group(3), 16)))
    return length, sequence


def cycles(sequence):
    cycle, previous = None, None
    for runner, pc in sequence:
        if runner == "server" and previous != "server":
            if cycle is not None:
                yield cycle
            cycle = []
        previous = runner
        if cycle is not None:
            cycle.append((runner, pc))


def function_names(elf, pcs, outermost):
    out = subprocess.run(["addr2line", "-a", "-f", "-i", "-C", "-e", elf] + [hex(pc) for pc in pcs],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    names, address, chain = {}, None, []
    for line in out + ["0x0000000000000000"]:
        if re.fullmatch(r"0x[0-9a-f]{16}", line):
            if address is not None:
                functions = chain[0::2] or ["?"]
                names[address] = re.sub(r"::h[0-9a-f]{16}$", "", functions[-1 if outermost else 0])
            address, chain = int(line, 16), []
        else:
            chain.append(line)
    return names


def report(args):
    length, sequence = read_log(args.log)
    kept = []
    for cycle in list(cycles(sequence))[2:]:
        server = sum(length.get(pc, 1) for runner, pc in cycle if runner == "server")
        if server >= args.min_server:
            kept.append(cycle)
    if not kept:
        sys.exit("no server turn cycle in the log matches")
    print(f"{len(kept)} cycles; medians per cycle:")
    for runner in ("core", "server"):
        instructions = [sum(length.get(pc, 1) for r, pc in c if r == runner) for c in kept]
        blocks = [sum(1 for r, _ in c if r == runner) for c in kept]
        distinct = [len({pc for r, pc in c if r == runner}) for c in kept]
        print(f"  {runner}: {statistics.median(instructions):.0f} instructions, "
              f"{statistics.median(blocks):.0f} blocks executed, {statistics.median(distinct):.0f} distinct")
    if not args.functions:
        return
    runner = "server" if subprocess.run(["readelf", "-h", args.functions], capture_output=True, text=True).stdout.find(
        f"0x{SERVER_BASE:x}") >= 0 else "core"
    executed, distinct = collections.Counter(), collections.Counter()
    for cycle in kept:
        for r, pc in cycle:
            if r == runner:
                executed[pc] += length.get(pc, 1)
        for pc in {pc for r, pc in cycle if r == runner}:
            distinct[pc] += 1
    pcs = sorted(executed)
    for title, counter, outermost in (("instructions", executed, False), ("distinct blocks", distinct, True)):
        names = function_names(args.functions, pcs, outermost)
        per_function = collections.Counter()
        for pc, value in counter.items():
            per_function[names.get(pc, "?")] += value
        print(f"{runner} {title} per cycle, by function:")
        for name, value in per_function.most_common(args.top):
            print(f"  {value / len(kept):8.1f}  {name[:140]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    recorder = commands.add_parser("record")
    recorder.add_argument("log")
    recorder.add_argument("--config", default="appliances/bench-smp.toml")
    recorder.add_argument("--after", type=float, default=3.0)
    recorder.add_argument("--seconds", type=float, default=2.0)
    recorder.add_argument("--dfilter", default=DFILTER)
    reporter = commands.add_parser("report")
    reporter.add_argument("log")
    reporter.add_argument("--min-server", type=int, default=0)
    reporter.add_argument("--functions")
    reporter.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    record(args) if args.command == "record" else report(args)


if __name__ == "__main__":
    main()
