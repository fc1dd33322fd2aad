"""The agent stage built from settings: a batch of requests (`genevolve run`, and the first stage of
`bench` and `wise run`), or one request rendered at once (`genevolve generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..settings import Settings
from .batch import InputProblem, Row, StageError, os_reason, prepare_dir
from .render import OK, render_record, save_render


def build_stage_agent(settings: Settings, progress: Any = None) -> Any:
    """The settings' agent, or StageError saying why it cannot be built."""
    from ..config import ConfigError
    from ..policies.base import PolicyError
    from ..settings import build_agent

    try:
        return build_agent(settings, progress=progress)
    except ConfigError:
        raise
    except (PolicyError, ValueError, TypeError, OSError) as exc:
        raise StageError(f"policy: {exc}") from None


async def run_agents(settings: Settings, rows: list[Row], problems: list[InputProblem], out_dir: str | Path, *,
                     parallel: int = 1, retry_errors: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run the settings' agent on every row not yet done in `out_dir`; the stage's counts."""
    from .agent_runs import run_agent_batch

    agent = build_stage_agent(settings)
    try:
        return await run_agent_batch(agent, rows, problems, out_dir, parallel=parallel, retry_errors=retry_errors,
                                     progress=progress)
    finally:
        await agent.aclose()


async def generate_one(settings: Settings, request: str, out_png: str | Path, *, progress: Any = None,
                       say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Agent then renderer for one request: writes the PNG and, beside it, a JSON record (request,
    trajectory, program and the render stage's fields). Returns that record plus `trajectory_object`."""
    from ..generators.base import GeneratorError
    from ..jsonio import atomic_write_json
    from ..settings import build_generator

    out_png = Path(out_png)
    prepare_dir(out_png.parent)            # before the agent runs: a bad -o costs nothing
    say("loading policy and tools …")
    agent = build_stage_agent(settings, progress=progress)
    try:
        generator = build_generator(settings)
    except (GeneratorError, ValueError, TypeError, OSError) as exc:
        await agent.aclose()
        raise StageError(f"backend: {exc}") from None
    try:
        traj = await agent.run(request)
        base = {"request": request, "trajectory": traj.to_dict(),
                "program": traj.program.to_dict() if traj.program else None}
        if not traj.ok:
            why = traj.error or f"run ended with {traj.termination}"
            record = render_record(base, "generate", f"error: {why}", error=why)
        else:
            say(f"program: {traj.program.gen_prompt[:160]}")
            for ref in traj.program.references:
                say(f"  reference {ref.img_id}: {ref.title}  ({ref.note})")
            say(f"rendering with {generator.name} …")
            try:
                metadata = await save_render(generator, traj.program, out_png)
                record = render_record(base, "generate", OK, path=out_png, metadata=metadata)
            except GeneratorError as exc:
                record = render_record(base, "generate", f"error: {exc}", error=str(exc))
            except OSError as exc:
                raise StageError(f"cannot write {out_png}: {os_reason(exc)}") from None
    finally:
        await agent.aclose()
        await generator.aclose()
    record.pop("id")
    try:
        atomic_write_json(out_png.with_suffix(".json"), record)
    except OSError as exc:
        raise StageError(f"cannot write {out_png.with_suffix('.json')}: {os_reason(exc)}") from None
    return {**record, "trajectory_object": traj}
