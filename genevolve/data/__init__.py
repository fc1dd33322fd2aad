"""The data pipeline: recipes -> requests -> teacher trajectories -> checks/audit -> splits -> GT -> export.

Modules, in pipeline order:
- `taxonomy`: tracks, the sixteen categories, recipe dimensions, the `Recipe` record;
- `world`, `world_facts`: entities of the offline world (library images with a Wikipedia summary,
  countries, landmarks, cities, public figures, poses, colour variants) and clues read from the corpus;
- `recipes`: the seeded balanced sampler and the ground-truth program text;
- `writers`: the offline template writer, the LLM writer, request checks, prompt hashes, near-duplicates;
- `checks`: programmatic checks and the six-dimension audit (offline or by a judge endpoint);
- `grounding`: `program_grounding(meta, program, images)`, the program-level check of the hidden entity;
- `splits`: entity-disjoint SFT / pool / benchmark splits and the decontamination check;
- `ground_truth`: GT images from other renditions, the visual filter, cross-rendition judge calibration;
- `export`: JSON lines and a Hugging Face DatasetDict; `published`: the published GenEvolve data reader;
- `stages`: each stage as a resumable batch, and `build`; `report`: the yield report and calibration;
- `offline_bench`: the offline benchmark, one client of the stages (`genevolve.pipeline.data`).
The expert teacher policy lives with the other policies: `genevolve.policies.expert`.
"""
