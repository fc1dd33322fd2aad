"""Runs one agent batch in a separate process, so a test can kill it with SIGKILL mid-run."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import FolderImageBackend, ListSearchBackend  # noqa: E402
from genevolve.agent import Agent  # noqa: E402
from genevolve.pipeline.agent_runs import run_agent_batch  # noqa: E402
from genevolve.pipeline.batch import read_rows  # noqa: E402
from genevolve.policies.openai_compat import OpenAICompatPolicy  # noqa: E402
from genevolve.tools import default_tools  # noqa: E402

out_dir, input_path, base_url, image_dir, parallel = sys.argv[1:6]
rows, problems = read_rows(input_path)
agent = Agent(OpenAICompatPolicy(base_url, "m"),
              default_tools(ListSearchBackend([]), FolderImageBackend(Path(image_dir))))
print(asyncio.run(run_agent_batch(agent, rows, problems, out_dir, parallel=int(parallel), progress=False)))
