"""Contract test over every architecture: load tiny, find the neuron site, hook and edit."""

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edits.neuron import EditSpec, edit_rows
from neva_sweep.models import ARCHITECTURES, TINY_CONFIGS, UnsupportedArchitecture
from neva_sweep.neurons.selection import ValueNeurons
from tests.helpers import capture_site_inputs


def test_every_architecture_has_a_tiny_model():
    covered = {cfg["model_type"] for cfg in TINY_CONFIGS.values()}
    assert covered == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_architecture_contract(name):
    host = nv.load_model(name)
    assert host.n_layers == 2 and host.layer_sizes == [96, 96]
    assert host.model.config.model_type == TINY_CONFIGS[name]["model_type"]
    batch = host.tokenize(["a short text", "a somewhat longer text about values"])
    seen = capture_site_inputs(host, lambda: host.model(**batch))
    assert all(x is not None and x.shape[-1] == 96 for x in seen)  # hook fires on every layer
    # Edit neuron 5 of layer 1 with `scale` -1 (zeroes it) and check the site sees it.
    neurons = ValueNeurons(torch.tensor([1]), torch.tensor([5]), torch.ones(1), torch.ones(1),
                           torch.ones(1))
    with edit_rows(host, [EditSpec(neurons, "scale", -1.0)], torch.zeros(1, dtype=torch.long)):
        edited = capture_site_inputs(host, lambda: host.model(**batch))
    assert torch.all(edited[1][..., 5] == 0)
    assert not torch.all(seen[1][..., 5] == 0)
    assert torch.equal(edited[0], seen[0])


def test_unknown_architecture_lists_supported():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(num_hidden_layers=1, hidden_size=32,
                                       num_attention_heads=2, intermediate_size=64,
                                       is_decoder=True))
    with pytest.raises(UnsupportedArchitecture, match="'bert'.*supported: llama, mistral"):
        nv.models.host_from_model(model, nv.models.registry.embedded_tokenizer(), "bert")


def test_unknown_model_name_mentions_registry():
    with pytest.raises(OSError, match="not a registry name .*smollm2-135m, tiny-llama"):
        nv.load_model("/nonexistent/model-dir")
    with pytest.raises(KeyError, match="model.dtype"):
        nv.load_model("tiny-llama", dtype="int3")


def test_padding_and_masks(tiny_host):
    texts = ["one", "one two three four five"]
    left = tiny_host.tokenize(texts, padding_side="left")
    right = tiny_host.tokenize(texts, padding_side="right")
    assert left.attention_mask[0, 0] == 0 and left.attention_mask[0, -1] == 1
    assert right.attention_mask[0, 0] == 1 and right.attention_mask[0, -1] == 0
    # Masks are respected: the short text's last-token logits do not depend on padding side.
    with torch.no_grad():
        lo = tiny_host.model(**left).logits[0, -1]
        n = int(right.attention_mask[0].sum())
        ro = tiny_host.model(**right).logits[0, n - 1]
    torch.testing.assert_close(lo, ro, atol=1e-4, rtol=1e-4)


def test_load_by_model_config():
    from neva_sweep.config import ModelConfig

    host = nv.load_model(ModelConfig(name="tiny-qwen2", short_name="q"))
    assert host.name == "q" and host.model.config.model_type == "qwen2"


def test_packaged_tokenizer_is_the_embedded_models():
    """models/tokenizer/ (package data, for the tiny models and the wheel) was saved from the
    embedded GGUF: same vocabulary, ids, special tokens and chat template."""
    from neva_sweep.models.registry import embedded_tokenizer, gguf_tokenizer

    ours, gguf = embedded_tokenizer(), gguf_tokenizer()
    assert len(ours) == len(gguf) == 49152
    for text in ["Hello world!", "  tabs\tand\nnewlines ünïcödé 你好 🙂",
                 "<|im_start|>user\nhi<|im_end|>", "I would rather work it out myself."]:
        assert ours(text).input_ids == gguf(text).input_ids, text
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "padding_side"):
        assert getattr(ours, attr) == getattr(gguf, attr), attr
    chat = [{"role": "user", "content": "What should I do?"}]
    assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == gguf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
