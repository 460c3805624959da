"""The chaos run's figures: outcomes, 500s, hangs, per-fault failures and recovery, usage rows vs answers."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from bench.chaosload import Load, Result


@dataclass
class Fault:
    name: str
    began: float  # seconds since the load started
    ended: float
    load_avg: float  # 1-minute load average just before it


def _summary(results: list[Result]) -> str:
    counts = collections.Counter(r.label for r in results)
    return ", ".join(f"{label} {n}" for label, n in counts.most_common()) or "-"


def report_chaos(
    load: Load,
    faults: list[Fault],
    rows: list[tuple[str, str]],
    key_ids: list[str],
    sigkill_allowance: float,
    recovery_limit: float,
) -> bool:
    """Print the figures; False when a defect shows (each one printed as `DEFECT: ...`)."""
    results = load.results
    defects: list[str] = []
    end = max((r.sent for r in results), default=0.0)
    print(f"\nrequests sent: {len(results)} over {end:.0f} s")
    print(f"outcomes: {_summary(results)}")
    by_status = collections.Counter(r.status for r in results if r.status)
    print("answered by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    five_hundreds = [r for r in results if r.status == 500]
    hangs = [r for r in results if r.outcome == "hang"]
    truncated = [r for r in results if r.outcome == "truncated"]
    print(
        f"500s: {len(five_hundreds)}   hangs (> {load.timeout:.0f} s): {len(hangs)}   truncated-looking-complete: {len(truncated)}"
    )
    for r in five_hundreds[:5]:
        print(f"  500 {r.rid} {r.kind} at {r.sent:.1f}s: {r.body}")
    if five_hundreds:
        defects.append(f"{len(five_hundreds)} responses with status 500")
    if hangs:
        defects.append(f"{len(hangs)} requests hung (first: {hangs[0].rid} {hangs[0].kind} at {hangs[0].sent:.1f}s)")
    if truncated:
        defects.append(f"{len(truncated)} streams ended cleanly without [DONE] or an error event")

    # Failures per fault, and recovery: from the fault's end to the send time of the last failure
    # before the next fault (0 when nothing failed after the end).
    print("\n| fault | lasted s | load avg | sent | failed during | failed after its end | recovery s |")
    print("|---|---|---|---|---|---|---|")
    first = faults[0].began if faults else end + 1
    # Failed before any fault had begun (a request in flight when the first one began is that fault's).
    steady = [r for r in results if r.sent + r.took < first and r.outcome != "ok"]
    print(f"| (steady, before the first) | | | | {len(steady)}: {_summary(steady)} | | |")
    if steady:
        defects.append(f"{len(steady)} failures under steady load before any fault")
    samples: list[str] = []
    for i, f in enumerate(faults):
        until = faults[i + 1].began if i + 1 < len(faults) else end + 1
        # A request still out when the next fault began is that fault's as much as this one's: left out.
        window = [r for r in results if f.began <= r.sent < until and r.sent + r.took < until]
        during = [r for r in window if r.sent < f.ended and r.outcome != "ok"]
        after = [r for r in window if r.sent >= f.ended and r.outcome != "ok"]
        recovery = max((r.sent for r in after), default=f.ended) - f.ended
        print(
            f"| {f.name} | {f.ended - f.began:.1f} | {f.load_avg:.2f} | {len(window)} | {len(during)}: {_summary(during)}"
            f" | {len(after)}: {_summary(after)} | {recovery:.2f} |"
        )
        for when, group in (("during", during), ("after", after)):
            seen: dict[str, Result] = {}
            for r in group:
                seen.setdefault(r.label, r)
            samples += [f"  {f.name}, {when}: {lb} at {r.sent:.1f}s: {r.body[:150]}" for lb, r in seen.items()]
        if after:
            samples.append(f"  {f.name}: last failure after the end at {max(r.sent for r in after):.1f}s")
        if recovery > recovery_limit:
            defects.append(f"{f.name}: requests failed until {recovery:.1f} s after the fault ended")
        if f.name == "instance SIGTERM" and during:
            defects.append(f"{f.name}: {len(during)} requests failed during a graceful restart")

    print("what failed, one example per fault and outcome:")
    print("\n".join(samples) or "  -")

    # Usage rows against the answers fastproxy sent (its x-request-id came back), one by one.
    row_count = collections.Counter(rid for rid, _ in rows)
    answered = [r for r in results if r.from_proxy]
    answered_ids = {r.rid for r in answered}
    missing = [r for r in answered if r.rid not in row_count]
    extra = [rid for rid in row_count if rid not in answered_ids]
    duplicated = [rid for rid, n in row_count.items() if n > 1]
    print(
        f"\nusage rows: {len(rows)}; responses from fastproxy: {len(answered)}; answered without a row: {len(missing)}"
    )
    print(f"rows without a fastproxy answer at the client (hang, cut before headers, balancer errors): {len(extra)}")
    print(f"request ids with more than one row: {len(duplicated)}")
    print("| key | responses | rows | missing |")
    print("|---|---|---|---|")
    for k, key_id in enumerate(key_ids):
        mine = [r for r in answered if r.key == k]
        print(
            f"| {key_id[-8:]} | {len(mine)} | {sum(1 for _, kid in rows if kid == key_id)} |"
            f" {sum(1 for r in mine if r.rid not in row_count)} |"
        )
    kill = next((f for f in faults if f.name == "instance SIGKILL"), None)
    around = [r for r in missing if kill is not None and kill.began - 3 <= r.sent <= kill.ended]
    # A stream cut by the kill was still in flight: its row dies with the process whatever the flush
    # interval; the allowance is about answers that had ended, whose rows waited in the buffer.
    in_flight = [r for r in around if r.outcome == "cut"]
    in_kill = [r for r in around if r.outcome != "cut"]
    elsewhere = [r for r in missing if r not in around]
    print(
        f"lost around the SIGKILL: {len(in_kill)} answers that had ended (allowance: one flush interval of one"
        f" instance's share, {sigkill_allowance:.0f} rows) + {len(in_flight)} streams in flight, cut by the kill;"
        f" lost elsewhere: {len(elsewhere)}"
    )
    for r in elsewhere[:5]:
        print(f"  no row: {r.rid} {r.kind} {r.label} at {r.sent:.1f}s")
    if elsewhere:
        defects.append(f"{len(elsewhere)} answered requests without a usage row outside the SIGKILL")
    if len(in_kill) > sigkill_allowance:
        defects.append(f"SIGKILL lost {len(in_kill)} rows, more than one flush interval's {sigkill_allowance:.0f}")
    if duplicated:
        defects.append(f"{len(duplicated)} request ids have more than one usage row")

    for d in defects:
        print(f"DEFECT: {d}")
    print("chaos: " + ("PASS" if not defects else f"FAIL ({len(defects)} defects)"))
    return not defects
