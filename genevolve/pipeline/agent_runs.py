"""The agent stage of a batch: requests in, one upstream-format result row per request out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..agent import Agent
from ..trajectory import ERROR, result_row
from .batch import InputProblem, ResultStore, Row, request_text, run_items


def is_failed(record: dict[str, Any]) -> bool:
    """Records that a rerun should try again: the run itself failed (not a poor answer)."""
    return record.get("termination") == ERROR


async def run_agent_batch(agent: Agent, rows: list[Row], problems: list[InputProblem], out_dir: str | Path,
                          *, parallel: int = 1, retry_errors: bool = True, progress: bool = True
                          ) -> dict[str, int]:
    """Run the agent on every row not yet done in `out_dir`; returns counts for the report:
    total, skipped, ran, errors (records with an error, poor answers included), problems, failed
    (items whose run failed, input problems included) and first_error (the first one's error)."""
    store = ResultStore(out_dir, "results", retry=is_failed if retry_errors else None)
    try:
        for p in problems:       # rows that cannot run still get a record that says why
            if not store.done(p.id):
                store.add(result_row(p.id, None, error=p.message))

        async def work(row: Row) -> dict[str, Any]:
            try:
                request = request_text(row)
            except ValueError as exc:
                return result_row(row.id, None, data=row.data, error=str(exc))
            traj = await agent.run(request, guide=row.data.get("guide") if isinstance(row.data.get("guide"), str)
                                   else None)
            return result_row(row.id, request, traj, data=row.data)

        t0 = time.perf_counter()
        counts = await run_items(rows, work, store, parallel=parallel, desc="agent",
                                 on_error=lambda row, exc: result_row(row.id, None, data=row.data,
                                                                      error=f"{type(exc).__name__}: {exc}"),
                                 progress=progress)
        counts["seconds"] = round(time.perf_counter() - t0, 3)
        counts["problems"] = len(problems)
    finally:
        store.close(order=[p.id for p in problems] + [r.id for r in rows])
    # Items of this input whose run failed, this time or before (an item done earlier stays done).
    failed = [store.records[i] for i in [p.id for p in problems] + [r.id for r in rows]
              if i in store.records and is_failed(store.records[i])]
    counts["failed"] = len(failed)
    counts["first_error"] = failed[0].get("error") if failed else None
    return counts
