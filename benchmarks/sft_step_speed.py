"""Seconds per SFT record on this CPU, three ways, on the same records and in one run.

  checkpointed  one record per forward, activation checkpointing on (TRL's default, and what the
                CPU preset ran before)
  whole         one record per forward, no checkpointing
  shared        ROWS records per forward, the system prompt they all begin with run once
                (genevolve.train.sft.prefix_shared_token_loss)

Each way runs forward + backward in bf16 autocast over the same RECORDS records (the shortest, middle
and longest of the data are all in there: records are taken at even steps through the file sorted by
length, then grouped by length as the CPU preset batches them).

  python benchmarks/sft_step_speed.py --data DATA/export/sft/train.jsonl [--records 8] [--rows 4]
"""

from __future__ import annotations

import argparse
import time

from cpu_self_evolution import SMALL_POLICY_BUDGET  # the benchmark whose SFT this times (puts the repo on the path)

from genevolve.train.config import SFT_PRESETS

CPU = SFT_PRESETS["cpu"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--records", type=int, default=CPU["batch_size"])
    p.add_argument("--rows", type=int, default=CPU["per_device_batch"])
    p.add_argument("--threads", type=int, default=CPU["threads"])
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from genevolve.train.base_models import resolve_model
    from genevolve.train.sequences import end_of_turn_ids
    from genevolve.train.sft import prefix_shared_token_loss, read_sft_records, shared_prefix_length, \
        student_view, tokenize_records

    torch.set_num_threads(args.threads)
    base = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.train()
    examples = tokenize_records(read_sft_records(args.data), tokenizer, max_length=CPU["max_length"],
                                student=student_view(SMALL_POLICY_BUDGET),
                                end_ids=end_of_turn_ids(tokenizer, model.generation_config))
    examples.sort(key=lambda e: len(e["input_ids"]))
    step = max(len(examples) // args.records, 1)
    chosen = examples[step // 2::step][:args.records]
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id or 0)
    tokens = sum(len(e["input_ids"]) for e in chosen)
    print(f"{len(chosen)} records, {tokens} tokens ({min(len(e['input_ids']) for e in chosen)}–"
          f"{max(len(e['input_ids']) for e in chosen)} each), {args.threads} threads")

    def whole(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**batch).loss.backward()

    def shared(batch):
        prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prefix_shared_token_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                     prefix)["nll"].backward()

    ways = [("checkpointed", 1, whole, True), ("whole", 1, whole, False), ("shared", args.rows, shared, False)]
    seconds = {}
    for name, rows, run, checkpointed in ways:
        if checkpointed:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        t0 = time.perf_counter()
        for i in range(0, len(chosen), rows):
            run(collate(chosen[i:i + rows]))
            model.zero_grad(set_to_none=True)
        seconds[name] = time.perf_counter() - t0
        print(f"{name:>13}: {seconds[name] / len(chosen):6.2f} s per record   "
              f"({seconds['checkpointed'] / seconds[name]:.2f}× checkpointed)")


if __name__ == "__main__":
    main()
