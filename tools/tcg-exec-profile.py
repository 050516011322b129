#!/usr/bin/env python3
"""Where pCPU 0's emulated time goes per server turn, from a QEMU `-d exec` log.

Under QEMU TCG a guest-visible world switch (VMRUN, #VMEXIT) or CR3 write
empties the vCPU's soft TLB and its jump cache, so code after it starts
cold: every translated block it enters through a lookup (a call or jump to
another page, every return) misses once, and every code or data page it
touches is walked again. `-d exec` logs each block entered through a lookup
("Trace CPU: HOST [CS_BASE/PC/FLAGS/CFLAGS]"), not blocks chained to
directly, which is what this script counts.

Usage:
    CAIRN_QEMU_EXTRA="-d exec -D /tmp/exec.log" \
        cargo xtask run --config appliances/bench-smp.toml --duration 3
    tools/tcg-exec-profile.py /tmp/exec.log

It splits pCPU 0's log at each entry into a server (CPL 3) and prints, per
such turn (median over turns after the first 20, which are boot): lookups
and distinct blocks entered, by who ran them (core: CPL 0 outside a guest;
server: CPL 3; guest: SVM guest mode, flags bit 21), and the distinct
code pages, counted anew after each switch between the three.
"""
import collections
import re
import statistics
import sys

TRACE = re.compile(r"^Trace (\d+): \S+ \[([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)/")
GUEST_MODE = 1 << 21


def who(flags):
    if flags & GUEST_MODE:
        return "guest"
    return "server" if flags & 3 == 3 else "core"


def turns(path):
    """pCPU 0's (who, pc) sequence, cut at each entry into a server."""
    turn, previous = None, None
    with open(path, errors="replace") as log:
        for line in log:
            match = TRACE.match(line)
            if not match or match.group(1) != "0":
                continue
            pc, flags = int(match.group(3), 16), int(match.group(4), 16)
            runner = who(flags)
            if runner == "server" and previous != "server":
                if turn is not None:
                    yield turn
                turn = []
            if turn is not None:
                turn.append((runner, pc, runner != previous))
            previous = runner


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    per_turn = collections.defaultdict(list)
    counted = 0
    for number, turn in enumerate(turns(sys.argv[1])):
        if number < 20:
            continue
        counted += 1
        stats = collections.Counter()
        epoch_blocks, epoch_pages = collections.defaultdict(set), collections.defaultdict(set)
        for runner, pc, switched in turn:
            if switched:
                stats[runner + " blocks"] += len(epoch_blocks[runner])
                stats[runner + " pages"] += len(epoch_pages[runner])
                epoch_blocks[runner], epoch_pages[runner] = set(), set()
            stats[runner + " lookups"] += 1
            epoch_blocks[runner].add(pc)
            epoch_pages[runner].add(pc >> 12)
        for runner in epoch_blocks:
            stats[runner + " blocks"] += len(epoch_blocks[runner])
            stats[runner + " pages"] += len(epoch_pages[runner])
        for runner in ("core", "server"):
            for what in ("lookups", "blocks", "pages"):
                per_turn[runner + " " + what].append(stats[runner + " " + what])
    if counted == 0:
        sys.exit("no server turns after the first 20 in the log")
    print(f"{counted} turns; medians per turn:")
    for runner in ("core", "server"):
        values = {what: statistics.median(per_turn[runner + " " + what]) for what in ("lookups", "blocks", "pages")}
        print(f"  {runner}: {values['lookups']:.0f} lookups, {values['blocks']:.0f} distinct blocks, {values['pages']:.0f} code pages")


if __name__ == "__main__":
    main()
