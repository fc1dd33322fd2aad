"""The caps on what the program accepts from outside, in one place.

Requests, answers, results files and images come from people, models and servers that may send
anything; each cap below bounds the memory and time one item can cost, so that one bad item ends
that item (a clear error naming the field and the cap) or is cut with the cut recorded, and never
takes the batch down. They live together rather than beside each reader because the readers sit in
unrelated layers (the batch stage, answer resolution, the renderer, the judges, the viewer) that
must agree on them, and because the README lists them as one table: a reader imports this module,
which imports nothing.
"""

from __future__ import annotations

# A request (`prompt` / `question` of an input row). The request is sent again on every turn, so
# its size multiplies; benchmark requests run to a few hundred characters and 8,000 (about 2,000
# tokens) leaves room for long, detailed briefs. Batch rows over it are an error naming the field;
# `genevolve generate` uses the first MAX_REQUEST_CHARS and says so.
MAX_REQUEST_CHARS = 8_000

# A program's gen_prompt. Generators read about a thousand tokens of prompt at most (Qwen-Image's
# text encoder, and the offline renderer's layout parser costs time per character), and the
# released checkpoint writes a few hundred characters. An answer's longer gen_prompt is cut here
# (issue `gen_prompt_truncated`); a results row with a longer one is a render error.
MAX_GEN_PROMPT_CHARS = 4_000

# Entries of an answer's `reference_images` that resolution looks at. A program keeps at most two
# references (the protocol's cap), so a long list is a broken reply: the rest are dropped with one
# issue (`reference_list_cut`) instead of one issue per entry.
MAX_ANSWER_REFERENCE_ENTRIES = 32

# References of a results row the render stage accepts: the most any generator backend takes
# (the OpenAI images API: 16). A row with more is a render error; none of them is decoded.
MAX_RENDER_REFERENCES = 16

# Decoded pixels of any image read from a file or a server reply (references, generated images,
# ground truths, judge inputs, thumbnails): 64 megapixels is an 8,000 x 8,000 photograph, about 200 MB
# as RGB, while a hostile 50,000 x 50,000 PNG is a few kilobytes on disk. Larger is refused before
# its pixels are decoded. (Downloads from the web have their own, lower cap: tools/download.py.)
MAX_IMAGE_PIXELS = 64_000_000

# Characters of one tool result the policy reads (the embedded policy asks for fewer: 350). Search
# digests and skill texts fit; a longer result is cut with a note saying how long it was.
MAX_OBSERVATION_CHARS = 12_000

# Bytes of one chat reply (policy or judge). A whole 4,096-token turn with log-probs is well under a
# megabyte; a larger body is a broken server, retried like one.
MAX_REPLY_BYTES = 8 * 1024 * 1024

# A downloaded image (web image search): bytes on the wire and decoded pixels. Lower than
# MAX_IMAGE_PIXELS because nobody vouches for web images and a batch downloads thousands.
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
MAX_DOWNLOAD_PIXELS = 40_000_000
