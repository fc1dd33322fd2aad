"""The main job end to end with the real embedded policy: request → program → PNG.

Select with `-m model`; skipped when the pinned model cannot be assembled on this machine.
"""

import json

import pytest
from PIL import Image

from genevolve.models import model_status

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not model_status().get("available"), reason="embedded model not available")]

REQUEST = ("A poster with the flag of the country whose capital is Canberra and the words 'G'DAY MATE' "
           "at the top")


def test_generate_canberra_poster(tmp_path, capsys):
    from genevolve.cli import main

    out = tmp_path / "poster.png"
    # Greedy decoding keeps the test repeatable; the command's defaults sample at temperature 0.6.
    code = main(["generate", REQUEST, "-o", str(out), "--temperature", "0", "--seed", "0"])
    record = json.loads(out.with_suffix(".json").read_text())
    traj = record["trajectory"]
    assert code == 0, (record.get("image_status"), traj.get("error"))
    image = Image.open(out)
    assert image.format == "PNG" and max(image.size) == 1024
    program = record["program"]
    assert "G'DAY MATE" in program["gen_prompt"]
    titles = [r["title"] for r in program["reference_images"]]
    assert titles and "australia" in titles[0].lower(), titles
    assert [c["name"] for c in traj["tool_calls"]].count("image_search") >= 1
    assert record["render"]["backend"] == "offline"
    # the live view printed the tool calls as they happened
    assert "image_search(" in capsys.readouterr().err
